"""Process each distinct image once: a processor whose image processor remembers its results.

A rollout re-renders every conversation at every turn, and with it every image the conversation
holds: the task's image at each of 12 turns, the tool images after they first appear. The Qwen2-VL
image processor (resize, normalise, cut into 14-pixel patches) costs a few milliseconds per
448x448 image, the same at batch 1 and batch 16. `with_image_cache(processor)` returns a shallow
copy of the processor whose image processor handles one image at a time and keeps the results
by image content (pixels, mode and size) and keyword arguments, least recently used first out.
The Qwen2-VL image processor treats every image on its own, so the concatenated results are the
ones a single call over the whole list gives (tested).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from typing import Any

# Bytes of processed pixels kept per cache (a 448x448 image is about 4.8 MB in float32).
DEFAULT_CAPACITY_BYTES = 512 * 2**20


def image_key(image: Any) -> bytes:
    """A digest of a PIL image's mode, size and pixels."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode} {image.size}".encode())
    return digest.digest()


class CachedImageProcessor:
    """Wraps an image processor: each (image, keyword arguments) is processed once.

    Only lists of PIL images with tensor outputs are cached; any other call goes straight to the
    wrapped processor. Every other attribute is the wrapped processor's.
    """

    def __init__(self, inner: Any, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.inner = inner
        self.capacity_bytes = capacity_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[bytes, str], dict[str, Any]] = OrderedDict()
        self._bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        import torch
        from PIL import Image
        from transformers import BatchFeature

        if not isinstance(images, list) or not all(isinstance(i, Image.Image) for i in images):
            return self.inner(images, **kwargs)
        options = repr(sorted(kwargs.items()))
        parts = []
        for image in images:
            key = (image_key(image), options)
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                entry = dict(self.inner([image], **kwargs))
                if not all(torch.is_tensor(value) for value in entry.values()):
                    return self.inner(images, **kwargs)
                self._store(key, entry)
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            parts.append(entry)
        merged = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        return BatchFeature(merged, tensor_type=None)

    def _store(self, key: tuple[bytes, str], entry: dict[str, Any]) -> None:
        size = sum(value.numel() * value.element_size() for value in entry.values())
        if size > self.capacity_bytes:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.capacity_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(value.numel() * value.element_size() for value in dropped.values())


def with_image_cache(processor: Any, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> Any:
    """A shallow copy of `processor` whose image processor is a `CachedImageProcessor`.

    The original processor (shared through `load_processor`) is left as it is; a processor
    without an image processor (a bare tokenizer) is returned unchanged.
    """
    inner = getattr(processor, "image_processor", None)
    if inner is None:
        return processor
    copied = copy.copy(processor)
    copied.image_processor = CachedImageProcessor(inner, capacity_bytes)
    return copied
