"""The photo/drawing filter on synthetic photo-like and drawing-like images, lossless and lossy."""

import io

import numpy as np
import pytest
from PIL import Image

from broad_fixtures import cut_out, drawing_like, encode, photo_like
from deltamerge.assets.photo_filter import is_photo, photo_stats


def _roundtrip(image, fmt, **kw):
    with Image.open(io.BytesIO(encode(image, fmt, **kw))) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("seed", range(6))
def test_photos_pass_drawings_fail_lossless(seed):
    assert is_photo(photo_like(seed))
    assert not is_photo(drawing_like(seed))


@pytest.mark.parametrize("fmt,kw", [("JPEG", {"quality": 85}), ("WEBP", {"quality": 80})])
def test_lossy_drawings_still_fail_and_photos_pass(fmt, kw):
    for seed in range(4):
        assert is_photo(_roundtrip(photo_like(seed), fmt, **kw))
        lossy = _roundtrip(drawing_like(seed), fmt, **kw)
        assert photo_stats(lossy).palette < 0.5 or not is_photo(lossy)  # exact palette is gone ...
        assert not is_photo(lossy)  # ... but the flat areas remain


def test_transparent_pixels_are_ignored():
    rgba = cut_out(photo_like(3))
    assert is_photo(rgba)
    s = photo_stats(rgba)
    assert s.visible == int((rgba[..., 3] >= 128).sum())  # no stride below SIDE px
    # a cut-out drawing stays a drawing although its transparent border is all one colour
    assert not is_photo(cut_out(drawing_like(3)))


def test_gray_flat_and_tiny_images():
    gray = photo_like(1)[..., 0]
    assert is_photo(gray)
    assert not is_photo(np.full((80, 80, 3), 200, np.uint8))
    assert not is_photo(photo_like(2, 20, 20))  # too few visible pixels to judge
    with pytest.raises(ValueError, match="uint8"):
        photo_stats(np.zeros((8, 8), np.float32))


def test_large_images_are_strided_not_resized():
    big = np.kron(drawing_like(4, 150, 200), np.ones((4, 4, 1), np.uint8))  # 600 x 800 drawing
    s = photo_stats(big)
    assert s.visible <= 256 * 256 and s.palette > 0.5 and not is_photo(big)
