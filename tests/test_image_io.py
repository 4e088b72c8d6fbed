"""Tests for ssprl_d2.data.image_io: mode conversion, EXIF orientation and bad-file errors."""

import numpy as np
import pytest
from PIL import Image, ImageFile

from ssprl_d2.data.image_io import BadImageError, read_image_rgb


def _save(img: Image.Image, path, **kwargs) -> str:
    img.save(str(path), **kwargs)
    return str(path)


def _check_rgb(arr: np.ndarray, shape) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)
    assert arr.flags["C_CONTIGUOUS"] and arr.flags["WRITEABLE"]


def test_rgb_png_roundtrip(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    arr = read_image_rgb(_save(Image.fromarray(data), tmp_path / "a.png"))
    _check_rgb(arr, (9, 13))
    np.testing.assert_array_equal(arr, data)


def test_grayscale_replicated_to_three_channels(tmp_path):
    data = np.arange(0, 240, 2, dtype=np.uint8).reshape(8, 15)
    arr = read_image_rgb(_save(Image.fromarray(data, "L"), tmp_path / "g.png"))
    _check_rgb(arr, (8, 15))
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], data)


def test_one_bit_maps_to_black_and_white(tmp_path):
    bits = np.zeros((6, 10), dtype=bool)
    bits[:, 5:] = True
    arr = read_image_rgb(_save(Image.fromarray(bits), tmp_path / "b.png"))
    _check_rgb(arr, (6, 10))
    assert (arr[:, :5] == 0).all() and (arr[:, 5:] == 255).all()


def test_rgba_alpha_composited_on_black(tmp_path):
    data = np.full((4, 6, 4), (200, 100, 50, 255), dtype=np.uint8)
    data[:, 2:4, 3] = 0
    data[:, 4:, 3] = 128
    arr = read_image_rgb(_save(Image.fromarray(data, "RGBA"), tmp_path / "rgba.png"))
    _check_rgb(arr, (4, 6))
    assert (arr[:, :2] == (200, 100, 50)).all()
    assert (arr[:, 2:4] == 0).all()
    np.testing.assert_allclose(arr[0, 4], (100, 50, 25), atol=1)


def test_la_mode(tmp_path):
    data = np.zeros((3, 4, 2), dtype=np.uint8)
    data[..., 0] = 180
    data[:, :2, 1] = 255
    arr = read_image_rgb(_save(Image.fromarray(data, "LA"), tmp_path / "la.png"))
    _check_rgb(arr, (3, 4))
    assert (arr[:, :2] == 180).all() and (arr[:, 2:] == 0).all()


def test_cmyk_converted(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.uint8)
    data[:, 2:] = (0, 255, 255, 0)  # pure red in CMYK
    arr = read_image_rgb(_save(Image.fromarray(data, "CMYK"), tmp_path / "c.tif"))
    _check_rgb(arr, (4, 4))
    assert (arr[:, :2] == 255).all()
    assert (arr[:, 2:] == (255, 0, 0)).all()


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    arr = read_image_rgb(_save(img, tmp_path / "c.jpg", quality=95))
    _check_rgb(arr, (16, 16))
    assert arr.min() > 240  # white, not inverted


def test_palette_and_palette_transparency(tmp_path):
    img = Image.new("P", (5, 3))
    img.putpalette([0, 0, 0, 10, 200, 30, 250, 20, 90] + [0] * (256 * 3 - 9))
    img.putdata([1, 1, 2, 2, 0] * 3)
    arr = read_image_rgb(_save(img, tmp_path / "p.png"))
    _check_rgb(arr, (3, 5))
    assert (arr[:, :2] == (10, 200, 30)).all() and (arr[:, 2:4] == (250, 20, 90)).all()

    arr_t = read_image_rgb(_save(img, tmp_path / "pt.png", transparency=2))
    _check_rgb(arr_t, (3, 5))
    assert (arr_t[:, :2] == (10, 200, 30)).all() and (arr_t[:, 2:4] == 0).all()


@pytest.mark.parametrize("dtype,ext", [("<u2", "png"), (">u2", "tif")])
def test_16_bit_scaled_by_dtype_range(tmp_path, dtype, ext):
    data = np.array([[0, 100 * 256, 65535, 1000]], dtype=np.uint16).astype(dtype)
    img = Image.fromarray(data)
    assert img.mode.startswith("I;16")
    arr = read_image_rgb(_save(img, tmp_path / f"d16.{ext}"))
    _check_rgb(arr, (1, 4))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 100, 255, 3])


def test_32_bit_integer_and_float(tmp_path):
    ints = np.array([[-50, 0, 50]], dtype=np.int32)  # not 8/16-bit data: stretched
    arr = read_image_rgb(_save(Image.fromarray(ints, "I"), tmp_path / "i.tif"))
    _check_rgb(arr, (1, 3))
    np.testing.assert_allclose(arr[0, :, 1], [0, 128, 255], atol=1)

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    arr = read_image_rgb(_save(Image.fromarray(floats, "F"), tmp_path / "f.tif"))
    np.testing.assert_array_equal(arr[0, :, 2], [0, 128, 255])


def test_exif_orientation_applied(tmp_path):
    data = np.zeros((10, 30, 3), dtype=np.uint8)
    data[:, :10] = (255, 0, 0)  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    path = _save(Image.fromarray(data), tmp_path / "o.jpg", exif=exif, quality=95)
    arr = read_image_rgb(path)
    _check_rgb(arr, (30, 10))
    assert arr[:8, :, 0].mean() > 200 and arr[-8:, :, 0].mean() < 50  # left became top


def test_truncated_jpeg_raises(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(data), tmp_path / "full.jpg", quality=90)
    with open(path, "rb") as f:
        payload = f.read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(BadImageError, match="cut.jpg") as info:
        read_image_rgb(str(cut))
    assert "truncated" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "name,content",
    [
        ("text.jpg", b"this is not an image\n" * 20),
        ("empty.png", b""),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200))),  # valid signature, bad body
    ],
)
def test_non_image_raises_naming_path(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=name):
        read_image_rgb(str(path))


def test_missing_file_raises(tmp_path):
    with pytest.raises(BadImageError, match="nope.jpg"):
        read_image_rgb(str(tmp_path / "nope.jpg"))


def test_bad_image_error_is_value_error():
    assert issubclass(BadImageError, ValueError)
