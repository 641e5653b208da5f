from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxgym.data.vocabulary import (
    CLUTTER_KINDS,
    COLOURS,
    DIGITS,
    ICONS,
    NEAR_MISS_COLOURS,
    NEAR_MISS_KINDS,
    NEAR_MISS_SHAPES,
    SCREEN_WORDS,
    SHAPES,
    known_labels,
    labels_match,
    normalize_label,
    shape_label,
)


def canonical_labels() -> list[str]:
    labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    labels += [f"word {w}" for w in SCREEN_WORDS]
    labels += [f"digit {d}" for d in DIGITS]
    labels += [f"icon {i}" for i in ICONS]
    labels += ["off", *CLUTTER_KINDS]
    return labels


def test_known_labels() -> None:
    assert known_labels() == frozenset(canonical_labels())
    assert "red circle" in known_labels() and "purple giraffe" not in known_labels()


@pytest.mark.parametrize("label", canonical_labels())
def test_canonical_labels_are_fixed_points(label: str) -> None:
    assert normalize_label(label) == label


def test_canonical_labels_are_distinct() -> None:
    labels = canonical_labels()
    assert len({normalize_label(x) for x in labels}) == len(labels)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red Circle", "red circle"),
        ("  red   circle. ", "red circle"),
        ("a red circle", "red circle"),
        ("the red circles", "red circle"),
        ("circle, red", "red circle"),
        ("grey square", "gray square"),
        ("GREY-SQUARE", "gray square"),
        ("red colored cross shape", "red cross"),
        ("red plus sign", "red cross"),
        ("blue crosses", "blue cross"),
        ("cyan hexagon", "teal hexagon"),
        ("off", "off"),
        ("blank", "off"),
        ("switched off", "off"),
        ("The TV is off", "off"),
        ("blank screen", "off"),
        ("black screen", "off"),
        ("turned off monitor", "off"),
        ("no picture", "off"),
        ("seven", "digit 7"),
        ("7", "digit 7"),
        ("the number 7", "digit 7"),
        ("digit seven", "digit 7"),
        ("Numeral 0", "digit 0"),
        ("the word 'CAT'", "word cat"),
        ('text "dog"', "word dog"),
        ("CAT", "word cat"),
        ("word: Fish", "word fish"),
        ("heart", "icon heart"),
        ("heart icon", "icon heart"),
        ("a check mark", "icon check"),
        ("tick symbol", "icon check"),
        ("smiley face", "icon smiley"),
        ("lightning bolt", "icon lightning"),
        ("home icon", "icon house"),
        ("screen showing a red circle", "red circle"),
        ("TV displaying the word cat", "word cat"),
        ("monitor with digit 3", "digit 3"),
        ("1. red circle", "red circle"),
        ("Screen 2: the word CAT", "word cat"),
        ("screen 3 shows digit 7", "digit 7"),
        ("first: off", "off"),
        ("4) seven", "digit 7"),
        ("2 red circles", "red circle"),
        ("7 on screen", "digit 7"),
        ("seven on the TV", "digit 7"),
        ("coins", "coin"),
        ("Washers", "washer"),
        ("capsule", "pill"),
        ("television", "screen"),
        ("TVs", "screen"),
        ("", ""),
        ("?!", ""),
        ("purple giraffe", "purple giraffe"),
    ],
)
def test_normalize_label(text: str, expected: str) -> None:
    assert normalize_label(text) == expected


def test_black_shape_is_not_off() -> None:
    assert normalize_label("black square") == "black square"
    assert normalize_label("square black") == "black square"


@pytest.mark.parametrize(
    ("a", "b"),
    [("tv", "monitor"), ("screen", "display"), ("grey", "gray"), ("blank", "switched off")],
)
def test_synonyms_match(a: str, b: str) -> None:
    assert labels_match(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("red circle", "orange circle"),
        ("red triangle", "red pentagon"),
        ("digit 7", "digit 1"),
        ("word cat", "word dog"),
        ("off", "black square"),
        ("coin", "washer"),
        ("icon heart", "red heart shape circle"),
    ],
)
def test_near_misses_do_not_match(a: str, b: str) -> None:
    assert not labels_match(a, b)


def test_near_miss_tables_name_known_things() -> None:
    for colour, near in NEAR_MISS_COLOURS.items():
        assert colour in COLOURS and colour not in near and set(near) <= set(COLOURS)
    for shape, near in NEAR_MISS_SHAPES.items():
        assert shape in SHAPES and shape not in near and set(near) <= set(SHAPES)
    for kind, near in NEAR_MISS_KINDS.items():
        assert kind in CLUTTER_KINDS and kind not in near and set(near) <= set(CLUTTER_KINDS)


def test_shape_label_rejects_unknown() -> None:
    assert shape_label("red", "circle") == "red circle"
    with pytest.raises(ValueError, match="unknown colour"):
        shape_label("mauve", "circle")
    with pytest.raises(ValueError, match="unknown shape"):
        shape_label("red", "blob")


@given(st.text(max_size=40))
@pytest.mark.slow
def test_normalize_is_idempotent_and_total(text: str) -> None:
    once = normalize_label(text)
    assert isinstance(once, str)
    assert normalize_label(once) == once
    assert once == once.strip() and "  " not in once


@given(
    st.sampled_from(canonical_labels()), st.sampled_from(["", "the ", "a ", "  "]), st.booleans()
)
def test_case_and_article_do_not_matter(label: str, prefix: str, upper: bool) -> None:
    variant = prefix + (label.upper() if upper else label.title())
    assert labels_match(variant, label)
