"""Decode any common image into an upright RGB array, refusing what would hurt.

Usage::

    rgb = decode_image(Path("photo.jpg").read_bytes())   # H x W x 3 uint8, EXIF applied
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AnalysisError, ErrorCode
from .settings import DecodeLimits

__all__ = ["DecodeLimits", "RGBImage", "decode_image", "probe_image", "read_image_file", "to_rgb_array"]

RGBImage = NDArray[np.uint8]

# Our own limits replace Pillow's global bomb check, so it never warns or raises on its own.
Image.MAX_IMAGE_PIXELS = None


def read_image_file(path: Path, limits: DecodeLimits | None = None) -> bytes:
    """The bytes of an image file, refusing one over `limits.max_bytes` before reading it.

    Raises:
        AnalysisError: too large (`file_too_large`) or unreadable (`unreadable_file`).
    """
    limits = limits or DecodeLimits()
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise AnalysisError(
                ErrorCode.FILE_TOO_LARGE,
                f"the file has {size:,} bytes; the limit is {limits.max_bytes:,}",
            )
        return path.read_bytes()
    except OSError as exc:
        raise AnalysisError(ErrorCode.UNREADABLE_FILE, f"cannot read {path}: {exc.strerror}") from None


def probe_image(data: bytes, limits: DecodeLimits | None = None) -> tuple[int, int]:
    """(width, height) from the image's header, checked against `limits`, without decoding it.

    Raises:
        AnalysisError: empty, too large, not an image, or a header that cannot be read.
    """
    with _open_checked(data, limits or DecodeLimits()) as image:
        width, height = image.size
        return int(width), int(height)


def decode_image(data: bytes, limits: DecodeLimits | None = None) -> RGBImage:
    """Decode image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF first frame) to upright RGB.

    Raises:
        AnalysisError: empty, too large, not an image, truncated or otherwise unreadable.
    """
    with _open_checked(data, limits or DecodeLimits()) as image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. corrupt EXIF: the pixels still decode
                image.seek(0)  # animated formats: the first frame
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                return to_rgb_array(upright)
        except OSError as exc:
            if "truncated" in str(exc) or "broken data stream" in str(exc):
                raise AnalysisError(ErrorCode.TRUNCATED_IMAGE, "the image data is truncated") from None
            raise AnalysisError(ErrorCode.UNREADABLE_FILE, f"cannot decode the image: {exc}") from None
        except (ValueError, SyntaxError, EOFError) as exc:
            raise AnalysisError(ErrorCode.UNREADABLE_FILE, f"cannot decode the image: {exc}") from None


def _riff_cut_short(data: bytes) -> bool:
    """A RIFF file (WebP) holding fewer bytes than its header declares."""
    return len(data) >= 12 and data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _open_checked(data: bytes, limits: DecodeLimits) -> Image.Image:
    """The opened (not yet decoded) image, after the checks that need only its header."""
    if not data:
        raise AnalysisError(ErrorCode.EMPTY_FILE, "the file is empty")
    if len(data) > limits.max_bytes:
        raise AnalysisError(
            ErrorCode.FILE_TOO_LARGE,
            f"the file has {len(data):,} bytes; the limit is {limits.max_bytes:,}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data" from a broken TIFF header
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise AnalysisError(ErrorCode.NOT_AN_IMAGE, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # The header itself cut short ("Truncated File Read"), or a cut WebP, whose decoder
        # says only "could not create decoder object".
        if "truncated" in str(exc).lower() or _riff_cut_short(data):
            raise AnalysisError(ErrorCode.TRUNCATED_IMAGE, "the image data is truncated") from None
        raise AnalysisError(ErrorCode.UNREADABLE_FILE, f"cannot read the image: {exc}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise AnalysisError(
            ErrorCode.TOO_MANY_PIXELS,
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}",
        )
    return image


def to_rgb_array(image: Image.Image) -> RGBImage:
    """Any Pillow mode to an H x W x 3 uint8 RGB array.

    16-bit greys keep their top 8 bits (Pillow's own conversion clips them to white);
    transparency is flattened onto white, as a viewer would show it.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.uint32)
        shift = 8 if image.mode.startswith("I;16") or wide.max(initial=0) > 255 else 0
        grey = (wide >> shift).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float32).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
