"""The label vocabulary of the procedural scenes, and how free-form labels are normalised.

Every ground-truth label a scene produces is canonical: it comes from the tables below and
`normalize_label(label) == label`. A model's label is scored by normalising it and comparing the
result for equality (`labels_match`); there is no fuzzy matching, so scores are exact.

Canonical forms:
    coloured shape  "<colour> <shape>"     e.g. "red triangle", "gray hexagon"
    screen content  "<colour> <shape>"     a shape shown on a screen
                    "word <word>"          e.g. "word cat"
                    "digit <d>"            e.g. "digit 7"
                    "icon <icon>"          e.g. "icon heart"
                    "off"                  a switched-off screen
    clutter object  "<kind>"               e.g. "coin", "washer"

Normalisation rules, applied in this order by `normalize_label`:
    1. Unicode NFKC, lower case; quotes, brackets and punctuation become spaces ("-" too, so
       "check-mark" == "check mark"); whitespace collapses to single spaces.
    2. Articles and filler words are dropped: a, an, the, of, some, and fillers such as
       "coloured"/"colored", "shape", "shaped", "symbol", "sign", "picture", "image".
       A leading description of the screen itself is dropped too: "screen showing X",
       "tv displaying X", "monitor with X", "showing X" all become "X"; so is leading list
       numbering followed by content ("1. red circle", "screen 2: word cat", "first: off"). The device words
       tv, television, monitor, display and screen are synonyms (canonical "screen").
    3. Plurals of known vocabulary words become singular ("circles" -> "circle",
       "crosses" -> "cross", "coins" -> "coin"); unknown words are left alone.
    4. Synonyms: "grey" -> "gray", "violet" -> "purple", "cyan"/"turquoise" -> "teal",
       "rect"/"oblong" -> "rectangle", "plus" -> "cross", "disc"/"disk"/"dot" -> "circle",
       "hex" -> "hexagon", "tick"/"checkmark" -> "check", "home" -> "house",
       "crescent" -> "moon", "smile"/"smiley face"/"happy face" -> "smiley",
       "lightning bolt" -> "lightning", "capsule"/"tablet" -> "pill".
    5. Switched-off screens: "off", "blank", "switched off", "turned off", "powered off",
       "dark", "black", "nothing", "empty", "no picture" (with or without a device word,
       e.g. "blank screen", "the tv is off") all become "off". A device word alone becomes
       "screen".
    6. Digits: "seven", "7", "number 7", "digit seven", "numeral 7" -> "digit 7".
    7. Words: "word cat", "text cat", "the word 'CAT'", "cat" (a known screen word) -> "word cat".
    8. Icons: "icon heart", "heart icon", "heart" (a known icon) -> "icon heart".
    9. Colour and shape in either order ("circle red", "red circle") -> "red circle".
   10. Anything else is returned as the cleaned text of steps 1-3, so unknown labels still
       compare exactly after case, whitespace, punctuation, article and plural clean-up.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Canonical colours and the RGB each is drawn with. Chosen so that every pair is named
# differently by people; the near-miss pairs below are the closest pairs on purpose.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (245, 130, 30),
    "yellow": (240, 210, 40),
    "green": (50, 160, 60),
    "teal": (20, 150, 150),
    "blue": (40, 80, 210),
    "purple": (130, 60, 180),
    "pink": (240, 120, 180),
    "brown": (130, 85, 45),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}

# colour -> the colours a careless look confuses it with (used for near-miss distractors).
NEAR_MISS_COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "pink"),
    "orange": ("red", "yellow", "brown"),
    "yellow": ("orange",),
    "green": ("teal",),
    "teal": ("green", "blue"),
    "blue": ("teal", "purple"),
    "purple": ("blue", "pink"),
    "pink": ("red", "purple"),
    "brown": ("orange", "gray"),
    "gray": ("white", "black", "brown"),
    "black": ("gray",),
    "white": ("gray",),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "rectangle",
    "triangle",
    "pentagon",
    "hexagon",
    "star",
    "cross",
)

# shape -> the shapes it is easily mistaken for at small sizes.
NEAR_MISS_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("hexagon",),
    "square": ("rectangle",),
    "rectangle": ("square",),
    "triangle": ("pentagon",),
    "pentagon": ("hexagon", "triangle"),
    "hexagon": ("pentagon", "circle"),
    "star": ("cross",),
    "cross": ("star",),
}

# Screen contents. Words avoid colour, shape, icon and digit names so a bare word is unambiguous.
SCREEN_WORDS: tuple[str, ...] = (
    "cat",
    "dog",
    "fish",
    "bird",
    "tree",
    "car",
    "book",
    "lamp",
    "cup",
    "key",
    "hat",
    "bus",
    "pen",
    "egg",
    "owl",
    "map",
)
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
ICONS: tuple[str, ...] = ("heart", "arrow", "check", "house", "lightning", "sun", "moon", "smiley")
# Colours a shape on a screen may have (contrast with every display background).
SCREEN_SHAPE_COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "teal",
    "blue",
    "purple",
    "pink",
)
SCREEN_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
OFF = "off"

# Small objects for dense counting.
CLUTTER_KINDS: tuple[str, ...] = ("coin", "bead", "button", "nut", "washer", "pill")
NEAR_MISS_KINDS: dict[str, tuple[str, ...]] = {
    "coin": ("washer", "button"),
    "bead": ("button", "pill"),
    "button": ("coin", "bead"),
    "nut": ("washer",),
    "washer": ("coin", "nut"),
    "pill": ("bead",),
}

# Look-alike distractors in the screens family (never counted as screens).
SCREEN_DISTRACTORS: tuple[str, ...] = ("picture frame", "window")

DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}

_FILLERS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "some",
        "coloured",
        "colored",
        "color",
        "colour",
        "shape",
        "shaped",
        "symbol",
        "sign",
        "picture",
        "image",
        "is",
        "it",
        "that",
        "which",
        "just",
    }
)
_DEVICE_WORDS = frozenset({"tv", "television", "monitor", "display", "screen"})
_SHOW_WORDS = frozenset({"showing", "shows", "displaying", "displays", "with", "show", "on"})
_OFF_WORDS = frozenset(
    {"off", "blank", "switched", "turned", "powered", "dark", "black", "nothing", "empty", "no"}
)
_OFF_CORE = frozenset({"off", "blank", "dark", "black", "nothing", "empty"})

# Multi-word synonyms, replaced on the cleaned text before tokenising.
_PHRASE_SYNONYMS: tuple[tuple[str, str], ...] = (
    ("smiley face", "smiley"),
    ("happy face", "smiley"),
    ("smiling face", "smiley"),
    ("lightning bolt", "lightning"),
    ("check mark", "check"),
    ("no picture", "off"),
    ("no signal", "off"),
    ("plus", "cross"),
)
_WORD_SYNONYMS: dict[str, str] = {
    "grey": "gray",
    "violet": "purple",
    "cyan": "teal",
    "turquoise": "teal",
    "rect": "rectangle",
    "oblong": "rectangle",
    "disc": "circle",
    "disk": "circle",
    "dot": "circle",
    "hex": "hexagon",
    "tick": "check",
    "checkmark": "check",
    "home": "house",
    "crescent": "moon",
    "smile": "smiley",
    "capsule": "pill",
    "tablet": "pill",
    "text": "word",
    "number": "digit",
    "numeral": "digit",
    "television": "screen",
    "tv": "screen",
    "monitor": "screen",
    "display": "screen",
}

_KNOWN_WORDS = frozenset(
    set(COLOURS)
    | set(SHAPES)
    | set(SCREEN_WORDS)
    | set(ICONS)
    | set(CLUTTER_KINDS)
    | set(DIGIT_WORDS)
    | _DEVICE_WORDS
    | {"word", "digit", "icon", "frame", "window"}
)
_ORDINALS = frozenset(
    {"first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"}
    | {"tenth", "eleventh", "twelfth", "1st", "2nd", "3rd"}
    | {f"{n}th" for n in range(4, 61)}
)
_PUNCT = re.compile(r"[^\w\s]|_")


def _singular(token: str) -> str:
    """The singular of a known vocabulary word; unknown words unchanged."""
    if token in _KNOWN_WORDS or token in _WORD_SYNONYMS:
        return token
    for suffix in ("es", "s"):
        if token.endswith(suffix):
            stem = token[: -len(suffix)]
            if stem in _KNOWN_WORDS or stem in _WORD_SYNONYMS:
                return stem
    return token


def _clean_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _PUNCT.sub(" ", text)
    text = " ".join(text.split())
    for phrase, replacement in _PHRASE_SYNONYMS:
        text = re.sub(rf"\b{phrase}\b", replacement, text)
    tokens = [_singular(t) for t in text.split()]
    tokens = [_WORD_SYNONYMS.get(t, t) for t in tokens]
    return [t for t in tokens if t not in _FILLERS]


def _is_number(token: str) -> bool:
    return token.isdigit() or token in DIGIT_WORDS or token in _ORDINALS


def _strip_device_prefix(tokens: list[str]) -> list[str]:
    """Drops "screen showing", "tv with", "showing", and list numbering ("1.", "screen 2:",
    "first") in front of the content. A number is only dropped when content (not just device
    or "showing" words) follows it, so "7" and "7 on screen" keep their digit."""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if (
            t in _DEVICE_WORDS
            or t in _SHOW_WORDS
            or (
                _is_number(t)
                and any(u not in _DEVICE_WORDS and u not in _SHOW_WORDS for u in tokens[i + 1 :])
            )
        ):
            i += 1
        else:
            break
    rest = tokens[i:]
    if rest:
        return rest
    # Only device words ("screen", "tv"): keep them, it is not a content description.
    return tokens


@lru_cache(maxsize=65536)
def normalize_label(text: str) -> str:
    """The canonical form of a label, by the rules in this module's docstring.

    Args:
        text: any label, e.g. "The word 'CAT'", "Seven", "circles, red", "blank screen".

    Returns:
        The canonical label ("word cat", "digit 7", "red circle", "off"), or the cleaned text
        when it is not in the vocabulary. Empty or punctuation-only input gives "".
    """
    tokens = _clean_tokens(text)
    if not tokens:
        return ""
    tokens = _strip_device_prefix(tokens)
    token_set = set(tokens)

    # Off screens: only off-words and device words, with at least one core off-word.
    if token_set & _OFF_CORE and token_set <= (_OFF_WORDS | _DEVICE_WORDS | _SHOW_WORDS):
        return OFF
    content = [t for t in tokens if t not in _DEVICE_WORDS and t not in _SHOW_WORDS]
    if not content:
        return " ".join(tokens)

    # Digits.
    digit_tokens = [DIGIT_WORDS.get(t, t) for t in content if t != "digit"]
    if len(digit_tokens) == 1 and digit_tokens[0] in DIGITS:
        return f"digit {digit_tokens[0]}"

    # Words shown on a screen.
    word_tokens = [t for t in content if t != "word"]
    if len(word_tokens) == 1 and (
        word_tokens[0] in SCREEN_WORDS or ("word" in content and len(content) == 2)
    ):
        return f"word {word_tokens[0]}"

    # Icons.
    icon_tokens = [t for t in content if t != "icon"]
    if len(icon_tokens) == 1 and icon_tokens[0] in ICONS:
        return f"icon {icon_tokens[0]}"

    # Colour and shape, in either order.
    if len(content) == 2:
        first, second = content
        if first in COLOURS and second in SHAPES:
            return f"{first} {second}"
        if second in COLOURS and first in SHAPES:
            return f"{second} {first}"
    return " ".join(content)


def labels_match(predicted: str, truth: str) -> bool:
    """Whether two labels name the same thing after `normalize_label` (exact, no fuzziness)."""
    return normalize_label(predicted) == normalize_label(truth)


def shape_label(colour: str, shape: str) -> str:
    """The canonical label of a coloured shape."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {sorted(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    return f"{colour} {shape}"


@lru_cache(maxsize=1)
def known_labels() -> frozenset[str]:
    """Every canonical label the procedural scenes can produce (coloured shapes, screen
    contents, "off", clutter kinds); useful to tell a wrong label from an unknown one."""
    labels = {f"{c} {s}" for c in COLOURS for s in SHAPES}
    labels |= {f"word {w}" for w in SCREEN_WORDS}
    labels |= {f"digit {d}" for d in DIGITS}
    labels |= {f"icon {i}" for i in ICONS}
    labels |= {OFF, *CLUTTER_KINDS}
    return frozenset(labels)
