"""Reading images from files, numpy arrays and PIL images into the model's input format.

Every reader returns an (H, W, 3) uint8 array in the requested channel order ("RGB" or "BGR",
normally the config's INPUT.FORMAT), whatever the source looks like:

- grayscale (H, W), (H, W, 1), PIL modes "1", "L", "P", "CMYK", ... become three channels;
- an alpha channel (RGBA, LA, palette with transparency) is composited over a white
  background, the way an image viewer shows it;
- 16-bit and 32-bit integer images are scaled to 8 bits (65535 -> 255); float images are
  taken to be in [0, 1] (scaled to [0, 255]), or in [0, 255] when a value exceeds 1;
- the EXIF orientation tag of a file is applied, so the array is upright.

Anything that cannot be read raises :class:`ImageReadError`, whose message names the file,
says what is wrong and what to do.
"""

import glob
import os
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from detectron2.data.detection_utils import _apply_exif_orientation
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "ImageSource",
    "IMAGE_EXTENSIONS",
    "read_image",
    "pil_to_array",
    "array_to_rgb",
    "expand_image_inputs",
]

ImageSource = Union[str, os.PathLike, np.ndarray, Image.Image]

# File extensions Pillow can decode. Only files with one of these are taken as images.
IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)

_CHANNEL_ORDERS = ("RGB", "BGR")


class ImageReadError(ValueError):
    """An image could not be read; the message names the source, the problem and the fix."""


def _check_format(format: str) -> None:
    if format not in _CHANNEL_ORDERS:
        raise ValueError(f"Unsupported channel order {format!r}: use one of {_CHANNEL_ORDERS}.")


def _scale_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Map an integer, boolean or float array of any bit depth to uint8 [0, 255]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return (np.clip(finite * scale, 0.0, 255.0) + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.int64)
        if values.size and values.min() < 0:
            raise ImageReadError(
                f"{source}: signed pixel values below 0 are not an image; "
                "pass uint8, uint16 or float values in [0, 1]."
            )
        if array.dtype == np.uint16:
            bits = 16
        else:
            # A wide type without a known bit depth (PIL mode "I"): judge by the values.
            peak = int(values.max()) if values.size else 0
            bits = 8 if peak <= 255 else 16 if peak <= 65535 else 32
        full_scale = 2**bits - 1
        return ((values * 255 + full_scale // 2) // full_scale).astype(np.uint8)
    raise ImageReadError(
        f"{source}: unsupported pixel type {array.dtype}; pass uint8, uint16 or float arrays."
    )


def _composite_alpha(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8, composited over white."""
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32)
    return (rgb * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def array_to_rgb(array: np.ndarray, *, channel_order: str = "RGB", source: str = "array"):
    """Convert an image array to an (H, W, 3) uint8 RGB array.

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8, uint16, other
            non-negative integers, bool, or float in [0, 1] (or [0, 255]).
        channel_order: order of the colour channels of ``array``: "RGB" or "BGR"
            (e.g. frames from OpenCV). A fourth channel is alpha in both cases.
        source: name used in error messages.

    Returns:
        (H, W, 3) uint8 RGB array.
    """
    _check_format(channel_order)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageReadError(
            f"{source}: an image array must have shape (H, W), (H, W, 1), (H, W, 3) or "
            f"(H, W, 4), got {array.shape}; for a batch pass a list of images."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{source}: the image is empty (shape {array.shape}).")
    array = _scale_to_uint8(array, source)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if channel_order == "BGR":
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    if array.shape[2] == 4:
        array = _composite_alpha(array)
    return np.ascontiguousarray(array)


def pil_to_array(image: Image.Image, *, source: str = "PIL image") -> np.ndarray:
    """Convert a PIL image (any mode) to an upright (H, W, 3) uint8 RGB array.

    The EXIF orientation is applied, alpha is composited over white, high bit depths are
    scaled to 8 bits.
    """
    image = _apply_exif_orientation(image)
    mode = image.mode
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale: numpy keeps the bit depth for scaling.
        return array_to_rgb(np.asarray(image), source=source)
    elif mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    return array_to_rgb(np.asarray(image), source=source)


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(
            f"{path}: no such file; check the path (relative paths start at {os.getcwd()})."
        )
    if path.is_dir():
        raise ImageReadError(
            f"{path}: is a directory, not an image file, and has no files with an image "
            "extension; pass image files or a directory that holds some."
        )
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageReadError(
            f"{path}: unsupported format {suffix or '(no extension)'!r}; convert it to an "
            "image format such as .jpg, .png, .bmp, .tif or .webp (videos go to --video-input)."
        )
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image, source=str(path))
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{path}: the image is too large to decode safely ({error}); downscale it first."
        ) from error
    except UnidentifiedImageError as error:
        raise ImageReadError(
            f"{path}: not a readable {suffix} image (corrupt, truncated or another kind of "
            "file); re-export or re-download it."
        ) from error
    except OSError as error:
        raise ImageReadError(
            f"{path}: cannot decode the image ({error}); the file is corrupt or truncated, "
            "re-export or re-download it."
        ) from error


def read_image(
    source: ImageSource, format: str = "RGB", *, array_channel_order: str = "RGB"
) -> np.ndarray:
    """Read one image into an (H, W, 3) uint8 array in the given channel order.

    Args:
        source: a file path (str or Path), a numpy array (see :func:`array_to_rgb`) or a
            PIL image.
        format: channel order of the result, "RGB" or "BGR" (use the config's INPUT.FORMAT).
        array_channel_order: channel order of ``source`` when it is a numpy array.

    Returns:
        (H, W, 3) uint8 array in ``format`` order, upright per the EXIF orientation.

    Raises:
        ImageReadError: missing file, directory, unsupported extension, corrupt file, or
            an array that is not an image.
    """
    _check_format(format)
    if isinstance(source, Image.Image):
        rgb = pil_to_array(source)
    elif isinstance(source, np.ndarray):
        rgb = array_to_rgb(source, channel_order=array_channel_order)
    elif isinstance(source, (str, os.PathLike)):
        rgb = _read_file(Path(source))
    else:
        raise ImageReadError(
            f"{type(source).__name__}: not an image; pass a file path, a numpy array "
            "(H, W[, C]) or a PIL image."
        )
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb


def expand_image_inputs(patterns: Sequence[str]) -> List[str]:
    """Expand file names, globs and directories into a sorted-per-pattern list of files.

    A directory gives every file in it with an image extension (not recursive). A glob gives
    the files it matches. Anything else is kept as is, so that reading it later reports the
    problem (missing file, unsupported format) next to the other results instead of here.

    Args:
        patterns: file names, globs (``"imgs/*.jpg"``) or directories.

    Returns:
        List of paths, without duplicates, in the order of ``patterns``.
    """
    files: List[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if os.path.isdir(expanded):
            found = [
                os.path.join(expanded, name)
                for name in sorted(os.listdir(expanded))
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS
                and os.path.isfile(os.path.join(expanded, name))
            ]
        elif any(char in expanded for char in "*?["):
            found = sorted(path for path in glob.glob(expanded) if os.path.isfile(path))
        else:
            found = [expanded]
        if not found:
            found = [expanded]
        files.extend(path for path in found if path not in files)
    return files
