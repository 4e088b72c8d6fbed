"""Robust image reading: any PIL mode to HxWx3 uint8 RGB, with clear errors for bad files."""
import logging
import struct
import zlib

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageFile, ImageOps

logger = logging.getLogger(__name__)

__all__ = ["BadImageError", "read_image_rgb"]

# Everything PIL (and its plugins) is known to raise on corrupt, truncated or non-image data.
# Some plugins raise SyntaxError / struct.error / zlib.error instead of OSError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_warned_truncated_flag = False


class BadImageError(ValueError):
    """An image file that cannot be read or fully decoded."""


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image file as an RGB array, whatever its mode, with EXIF orientation applied.

    Args:
        path: file path (anything detectron2's PathManager can open).

    Returns:
        A contiguous, writeable HxWx3 uint8 array in RGB order.

    Raises:
        BadImageError: the file is missing, empty, not an image, truncated or otherwise corrupt;
            the message names the path and the reason.
    """
    _warn_if_truncated_images_allowed()
    try:
        with PathManager.open(path, "rb") as f:
            with Image.open(f) as img:
                # Image.open is lazy; load() decodes every pixel now so a truncated file fails
                # here rather than later inside a data-loader worker.
                img.load()
                img = _apply_exif_orientation(img, path)
                arr = _to_rgb_array(img)
    except BadImageError:
        raise
    except _DECODE_ERRORS as e:
        raise BadImageError(f"Cannot read image {path!r}: {type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(f"Cannot read image {path!r}: decoded to unusable shape {arr.shape}")
    return arr


def _warn_if_truncated_images_allowed() -> None:
    """Warn once if some other code enabled PIL's global truncated-image tolerance."""
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by other code; "
            "truncated images will be padded silently instead of raising BadImageError."
        )


def _apply_exif_orientation(img: Image.Image, path: str) -> Image.Image:
    """Rotate/flip the image as its EXIF orientation tag says.

    Args:
        img: a loaded PIL image.
        path: the file path, for the log message only.

    Returns:
        The oriented image (or the input, if its EXIF block is unusable).
    """
    try:
        oriented = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as e:
        # The pixels decoded fine; a broken metadata block is not worth losing the image for.
        logger.warning("Ignoring unreadable EXIF orientation of %s: %s", path, e)
        return img
    return img if oriented is None else oriented


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to an HxWx3 uint8 RGB array.

    Args:
        img: a loaded PIL image.

    Returns:
        HxWx3 uint8 array.
    """
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(img), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        # Converting a palette image with transparency straight to RGB loses the mask (and
        # warns); go through RGBA so transparent pixels get composited like any alpha.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_black(img.convert("RGBA"))
    # Covers "1", "L", "P", "CMYK", "YCbCr", "RGBX", "HSV", ...; raises ValueError if PIL has no
    # conversion (e.g. "LAB"), which the caller turns into BadImageError.
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _composite_on_black(rgba: Image.Image) -> np.ndarray:
    """Composite an RGBA image on a black background.

    Args:
        rgba: an image in mode "RGBA".

    Returns:
        HxWx3 uint8 array.
    """
    arr = np.asarray(rgba, dtype=np.uint16)
    # Fully transparent pixels often hold arbitrary colours; weighting by alpha hides them.
    rgb = (arr[:, :, :3] * arr[:, :, 3:4] + 127) // 255
    return rgb.astype(np.uint8)


def _high_depth_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit integer or float image to uint8.

    Args:
        arr: HxW array as returned by numpy for the PIL image.
        mode: the PIL mode it came from.

    Returns:
        HxW uint8 array.
    """
    if mode.startswith("I;16"):
        # Byte order is already handled by numpy's dtype; keep the top 8 of the 16 bits.
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        data = arr.astype(np.int64)
        lo, hi = int(data.min()), int(data.max())
        # Mode "I" is a 32-bit container; the real bit depth is unknown, so infer it from the
        # values: 8-bit and 16-bit data keep their absolute brightness, anything else is stretched.
        if lo >= 0 and hi <= 255:
            return data.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return (data >> 8).astype(np.uint8)
        return _stretch(data.astype(np.float64), lo, hi)
    data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(data.min()), float(data.max())
    # Float images are conventionally in [0, 1]; anything else is stretched to the full range.
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(data * 255.0).astype(np.uint8)
    return _stretch(data, lo, hi)


def _stretch(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 255].

    Args:
        data: HxW float array.
        lo: value mapped to 0.
        hi: value mapped to 255.

    Returns:
        HxW uint8 array (all zeros if the image is constant).
    """
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.rint((data - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)
