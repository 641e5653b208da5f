from __future__ import annotations

import pytest
from PIL import Image

from boxgym.policies.image_cache import CachedImageProcessor, with_image_cache
from boxgym.policies.prompting import load_processor, prepare_inputs


def conversation(*images: Image.Image) -> list[dict]:
    parts = [{"type": "image", "image": image} for image in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "How many?"}]}]


@pytest.fixture(scope="module")
def processor(tiny_model_path):
    return load_processor(tiny_model_path)


def test_cached_inputs_equal_the_processors_and_each_image_is_processed_once(processor):
    import torch

    red, gray = Image.new("RGB", (56, 84), "red"), Image.new("L", (112, 28), 90)
    batch = [
        conversation(red, gray),
        conversation(Image.new("RGB", (84, 56), "blue")),
        conversation(red),
    ]
    cached = with_image_cache(processor)
    plain = prepare_inputs(processor, batch, None)
    for _ in range(2):
        again = prepare_inputs(cached, batch, None)
        assert again.keys() == plain.keys()
        for name in plain:
            assert torch.equal(again[name], plain[name]), name
    assert cached.image_processor.misses == 3  # red, gray, blue; red's second use is a hit
    assert cached.image_processor.hits == 5
    assert not isinstance(processor.image_processor, CachedImageProcessor)  # shared one untouched


def test_a_changed_pixel_is_a_new_image(processor):
    cached = with_image_cache(processor)
    image = Image.new("RGB", (56, 56), "white")
    prepare_inputs(cached, [conversation(image)], None)
    image.putpixel((3, 3), (0, 0, 0))
    prepare_inputs(cached, [conversation(image)], None)
    assert cached.image_processor.misses == 2


def test_the_cache_stays_under_its_byte_budget(processor):
    cached = with_image_cache(processor, capacity_bytes=700_000)  # about two 112x112 images
    for shade in range(6):
        prepare_inputs(cached, [conversation(Image.new("RGB", (112, 112), (shade, 0, 0)))], None)
    store = cached.image_processor
    assert 0 < store._bytes <= 700_000
    assert len(store._entries) < 6
