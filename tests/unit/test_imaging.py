"""Decoding: every format and colour mode to upright H x W x 3 uint8; bad files to the right error."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import ImageFile

from face_analysis import AnalysisError, DecodeLimits, ErrorCode
from face_analysis.imaging import decode_image

BAD_INPUTS = {
    "empty": ErrorCode.EMPTY_FILE,
    "text_as_jpeg": ErrorCode.NOT_AN_IMAGE,
    "truncated_jpeg": ErrorCode.TRUNCATED_IMAGE,
    "huge_header_png": ErrorCode.TOO_MANY_PIXELS,
}

# Samples that must decode to the astronaut itself, with the mean absolute difference allowed
# (lossy encodings and GIF's 256-colour palette move pixels a little).
COLOUR_SAMPLES = {
    "jpeg": 0.0,
    "png": 0.0,
    "bmp": 0.0,
    "tiff": 0.0,
    "webp": 6.0,
    "gif": 8.0,
    "cmyk_jpeg": 4.0,
}


def mean_abs_diff(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def grey_of(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    return rgb.astype(np.float64) @ [0.299, 0.587, 0.114]


@pytest.mark.parametrize(("name", "code"), BAD_INPUTS.items())
def test_bad_input_gets_its_error_code(sample_bytes: dict[str, bytes], name: str, code: ErrorCode) -> None:
    with pytest.raises(AnalysisError) as caught:
        decode_image(sample_bytes[name])
    assert caught.value.code is code
    assert caught.value.message


@pytest.mark.parametrize(
    ("cut", "code"),
    [
        (lambda s: s["jpeg"][:200], ErrorCode.TRUNCATED_IMAGE),  # cut inside the header
        (lambda s: s["jpeg"][: len(s["jpeg"]) // 4], ErrorCode.TRUNCATED_IMAGE),
        (lambda s: s["png"][: len(s["png"]) // 2], ErrorCode.TRUNCATED_IMAGE),
        (lambda s: s["gif"][: len(s["gif"]) // 2], ErrorCode.TRUNCATED_IMAGE),
        (lambda s: np.random.default_rng(3).bytes(5000), ErrorCode.NOT_AN_IMAGE),
        (lambda s: b"<!doctype html><title>404</title>", ErrorCode.NOT_AN_IMAGE),
    ],
    ids=["jpeg-header-only", "jpeg-quarter", "png-half", "gif-half", "random-bytes", "html"],
)
def test_more_broken_files(
    sample_bytes: dict[str, bytes], cut: Callable[[dict[str, bytes]], bytes], code: ErrorCode
) -> None:
    with pytest.raises(AnalysisError) as caught:
        decode_image(cut(sample_bytes))
    assert caught.value.code is code


def test_broken_header_prints_no_warning() -> None:
    # A TIFF signature with nothing after it makes Pillow warn about corrupt EXIF; with warnings as
    # errors, an unguarded warning would escape decode_image instead of its AnalysisError.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AnalysisError) as caught:
            decode_image(b"II*\x00\x08\x00\x00\x00")
    assert caught.value.code is ErrorCode.NOT_AN_IMAGE


def test_huge_header_is_refused_before_decoding(
    sample_bytes: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 30000 x 30000 x 3 would be 2.7 GB: the refusal must come from the header, and say why.
    def no_pixels(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels were loaded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    with pytest.raises(AnalysisError, match="30000x30000") as caught:
        decode_image(sample_bytes["huge_header_png"])
    assert caught.value.code is ErrorCode.TOO_MANY_PIXELS


def test_byte_limit(sample_bytes: dict[str, bytes]) -> None:
    data = sample_bytes["jpeg"]
    with pytest.raises(AnalysisError) as caught:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert caught.value.code is ErrorCode.FILE_TOO_LARGE
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).shape == (512, 512, 3)


def test_pixel_limit(sample_bytes: dict[str, bytes]) -> None:
    data = sample_bytes["png"]
    with pytest.raises(AnalysisError) as caught:
        decode_image(data, DecodeLimits(max_pixels=512 * 512 - 1))
    assert caught.value.code is ErrorCode.TOO_MANY_PIXELS
    assert decode_image(data, DecodeLimits(max_pixels=512 * 512)).shape == (512, 512, 3)


@pytest.mark.parametrize(("name", "tolerance"), COLOUR_SAMPLES.items())
def test_formats_decode_to_the_same_rgb(
    sample_bytes: dict[str, bytes], astronaut_rgb: NDArray[np.uint8], name: str, tolerance: float
) -> None:
    rgb = decode_image(sample_bytes[name])
    assert rgb.shape == (512, 512, 3)
    assert rgb.dtype == np.uint8
    assert mean_abs_diff(rgb, astronaut_rgb) <= tolerance


@pytest.mark.parametrize("name", ["grey_jpeg", "png16"])
def test_grey_images_become_three_equal_channels(
    sample_bytes: dict[str, bytes], astronaut_rgb: NDArray[np.uint8], name: str
) -> None:
    rgb = decode_image(sample_bytes[name])
    assert rgb.shape == (512, 512, 3)
    assert rgb.dtype == np.uint8
    assert (rgb[:, :, 0] == rgb[:, :, 1]).all()
    assert (rgb[:, :, 1] == rgb[:, :, 2]).all()
    assert np.abs(rgb[:, :, 0] - grey_of(astronaut_rgb)).mean() < 3


def test_sixteen_bit_keeps_its_contrast(sample_bytes: dict[str, bytes]) -> None:
    # Pillow's own I;16 -> RGB conversion clips every value above 255 to white.
    grey = decode_image(sample_bytes["png16"])[:, :, 0]
    assert (grey == 255).mean() < 0.05
    assert grey.std() > 50
    assert grey.min() < 20


def test_alpha_is_flattened_onto_white(
    sample_bytes: dict[str, bytes], astronaut_rgb: NDArray[np.uint8]
) -> None:
    # The transparent pixels are stored as black: a decoder that drops alpha shows them black.
    rgb = decode_image(sample_bytes["rgba_png"])
    assert rgb.shape == (512, 512, 3)
    assert (rgb[:, :100] == 255).all()
    assert (rgb[-100:] == 255).all()
    assert (rgb[:-100, 100:] == astronaut_rgb[:-100, 100:]).all()


def test_animated_gif_gives_its_first_frame(
    sample_bytes: dict[str, bytes], astronaut_rgb: NDArray[np.uint8]
) -> None:
    rgb = decode_image(sample_bytes["animated_gif"])
    assert rgb.shape == (512, 512, 3)
    assert mean_abs_diff(rgb, astronaut_rgb) < 8  # later frames are flat red and blue


@pytest.mark.parametrize("name", ["exif6_jpeg", "exif8_jpeg"])
def test_exif_orientation_is_applied(
    sample_bytes: dict[str, bytes], upright_crop: NDArray[np.uint8], name: str
) -> None:
    rgb = decode_image(sample_bytes[name])
    assert rgb.shape == upright_crop.shape  # stored portrait, shown landscape
    assert mean_abs_diff(rgb, upright_crop) < 4


def test_one_pixel_image_decodes(sample_bytes: dict[str, bytes]) -> None:
    rgb = decode_image(sample_bytes["one_pixel_png"])
    assert rgb.shape == (1, 1, 3)
    assert rgb.tolist() == [[[200, 150, 100]]]


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_cut_webp_is_truncated_not_unreadable(sample_bytes: dict[str, bytes], keep: float) -> None:
    webp = sample_bytes["webp"]
    with pytest.raises(AnalysisError) as caught:
        decode_image(webp[: int(len(webp) * keep)])
    assert caught.value.code is ErrorCode.TRUNCATED_IMAGE
    # A RIFF header that does not lie is still decoded.
    assert decode_image(webp).shape[2] == 3
