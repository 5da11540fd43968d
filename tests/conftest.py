"""Shared fixtures: the one real photo, images generated from it, and the real analyzer.

The only photo in the repo is `src/face_analysis/data/astronaut.jpg` (public-domain NASA portrait of Eileen
Collins, shipped with scikit-image; 512 x 512, one face). Every other test image is made from it
at test time, in temporary folders: re-encodings, odd colour modes, EXIF rotations, a group
picture, and the broken files the decoder must refuse.

Tests that need the models fail (never skip) when the models are missing: CI always fetches them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from face_analysis import Analyzer, AnalyzerConfig, ModelError
from face_analysis.models import ModelPaths
from services_support import ASTRONAUT, encode

ASTRONAUT_PATH = ASTRONAUT
# Where the face is in astronaut.jpg (x1, y1, x2, y2), checked by eye and by the detector.
ASTRONAUT_FACE = (180, 58, 271, 176)
SCHEMA_PATH = Path(__file__).parents[1] / "src" / "face_analysis" / "schema" / "result.schema.json"

# Upright size of the EXIF-rotated samples: a landscape crop, so a wrong rotation changes the shape.
EXIF_CROP_HEIGHT = 384


@dataclass(frozen=True)
class GroupImage:
    """A picture with several pasted copies of the astronaut's face and where each face is."""

    path: Path
    boxes: list[tuple[float, float, float, float]]


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    return ASTRONAUT_PATH


@pytest.fixture(scope="session")
def astronaut_face() -> tuple[int, int, int, int]:
    """The astronaut's face box (x1, y1, x2, y2) in astronaut.jpg."""
    return ASTRONAUT_FACE


@pytest.fixture(scope="session")
def astronaut_rgb() -> NDArray[np.uint8]:
    """astronaut.jpg as a read-only 512 x 512 x 3 uint8 array, decoded by Pillow."""
    with Image.open(ASTRONAUT_PATH) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    rgb.setflags(write=False)
    return rgb


@pytest.fixture(scope="session")
def upright_crop(astronaut_rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The upright (landscape) view every EXIF-rotated sample must decode to."""
    return astronaut_rgb[:EXIF_CROP_HEIGHT]


def _exif_rotated_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels are rotated; its EXIF orientation tag turns them upright again.

    Orientation 6 tells viewers to rotate the stored pixels 90 degrees clockwise, 8 counter-clockwise;
    so the stored pixels are the upright view rotated the other way.
    """
    stored = upright.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


def _png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _sixteen_bit_png(rgb: NDArray[np.uint8]) -> bytes:
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    image = Image.fromarray(grey)
    assert image.mode == "I;16", image.mode
    return encode(image, "PNG")


def _rgba_png(rgb: NDArray[np.uint8]) -> bytes:
    """The astronaut with transparent borders (left 100 columns, bottom 100 rows) over black."""
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :100] = (0, 0, 0, 0)
    rgba[-100:] = (0, 0, 0, 0)
    return encode(Image.fromarray(rgba), "PNG")


def _animated_gif(rgb: NDArray[np.uint8]) -> bytes:
    """Frame 0 is the astronaut, frames 1 and 2 are flat red and blue."""
    frames = [
        Image.fromarray(rgb),
        Image.new("RGB", (512, 512), (255, 0, 0)),
        Image.new("RGB", (512, 512), "blue"),
    ]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_samples(rgb: NDArray[np.uint8]) -> dict[str, bytes]:
    """Every sample file, by name, as encoded bytes."""
    image = Image.fromarray(rgb)
    upright = Image.fromarray(rgb[:EXIF_CROP_HEIGHT])
    jpeg = ASTRONAUT_PATH.read_bytes()
    return {
        # Decodable: each must come out as the upright astronaut.
        "jpeg": jpeg,
        "png": encode(image, "PNG"),
        "webp": encode(image, "WEBP", quality=90),
        "bmp": encode(image, "BMP"),
        "tiff": encode(image, "TIFF"),
        "gif": encode(image, "GIF"),
        "cmyk_jpeg": encode(image.convert("CMYK"), "JPEG", quality=95),
        "png16": _sixteen_bit_png(rgb),
        "rgba_png": _rgba_png(rgb),
        "grey_jpeg": encode(image.convert("L"), "JPEG", quality=95),
        "animated_gif": _animated_gif(rgb),
        "exif6_jpeg": _exif_rotated_jpeg(upright, 6),
        "exif8_jpeg": _exif_rotated_jpeg(upright, 8),
        "one_pixel_png": encode(Image.new("RGB", (1, 1), (200, 150, 100)), "PNG"),
        # Not analysable.
        "empty": b"",
        "text_as_jpeg": b"This is not a picture, just some text in a file named .jpg\n" * 4,
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "huge_header_png": _png_claiming(30_000, 30_000),
    }


SAMPLE_SUFFIXES = {
    "png": ".png",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tiff",
    "gif": ".gif",
    "png16": ".png",
    "rgba_png": ".png",
    "animated_gif": ".gif",
    "one_pixel_png": ".png",
    "huge_header_png": ".png",
}


@pytest.fixture(scope="session")
def sample_bytes(astronaut_rgb: NDArray[np.uint8]) -> dict[str, bytes]:
    """Every sample image (see `make_samples`) as bytes, by name."""
    return make_samples(np.array(astronaut_rgb))


@pytest.fixture(scope="session")
def samples(sample_bytes: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample written to a file named after it (`png16.png`, `text_as_jpeg.jpg`, ...)."""
    folder = tmp_path_factory.mktemp("samples")
    paths: dict[str, Path] = {}
    for name, data in sample_bytes.items():
        path = folder / f"{name}{SAMPLE_SUFFIXES.get(name, '.jpg')}"
        path.write_bytes(data)
        paths[name] = path
    return paths


# The astronaut's head (x1, y1, x2, y2) in astronaut.jpg, pasted to make multi-face pictures.
HEAD_CROP = (140, 20, 310, 215)
Box = tuple[float, float, float, float]


def _paste_head(canvas: Image.Image, head: Image.Image, x: int, y: int, scale: float) -> tuple[int, Box]:
    """Paste `head` scaled by `scale` with its corner at (x, y); its width there and face box."""
    size = (max(1, round(head.width * scale)), max(1, round(head.height * scale)))
    canvas.paste(head.resize(size, Image.Resampling.LANCZOS), (x, y))
    fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
    crop_x, crop_y = HEAD_CROP[:2]
    box = (
        x + (fx1 - crop_x) * scale,
        y + (fy1 - crop_y) * scale,
        x + (fx2 - crop_x) * scale,
        y + (fy2 - crop_y) * scale,
    )
    return size[0], box


def _head(astronaut_rgb: NDArray[np.uint8]) -> Image.Image:
    x1, y1, x2, y2 = HEAD_CROP
    return Image.fromarray(np.array(astronaut_rgb[y1:y2, x1:x2]))


@pytest.fixture(scope="session")
def group_image(astronaut_rgb: NDArray[np.uint8], tmp_path_factory: pytest.TempPathFactory) -> GroupImage:
    """Four copies of the astronaut's head, at 0.6x to 1.5x, pasted side by side on a grey canvas."""
    head = _head(astronaut_rgb)
    canvas = Image.new("RGB", (1200, 520), (128, 128, 128))
    boxes: list[Box] = []
    x = 20
    for scale in (1.0, 0.6, 1.5, 0.8):
        width, box = _paste_head(canvas, head, x, 20 + (x % 3) * 15, scale)
        boxes.append(box)
        x += width + 40
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    canvas.save(path, quality=92)
    return GroupImage(path=path, boxes=boxes)


@pytest.fixture(scope="session")
def crowd_image(astronaut_rgb: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], list[Box]]:
    """A 1600 x 1000 grey canvas with 48 astronaut heads, faces 18 to 40 px tall, on a grid
    (at 14 px the accurate preset still misses a few: 2 of 48 in one draw); and the face boxes."""
    head = _head(astronaut_rgb)
    canvas = Image.new("RGB", (1600, 1000), (110, 120, 130))
    face_height = ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1]
    rng = np.random.default_rng(7)
    boxes = []
    for row in range(6):
        for col in range(8):
            scale = float(rng.uniform(18, 40)) / face_height
            x, y = 40 + col * 195 + int(rng.integers(0, 60)), 30 + row * 160 + int(rng.integers(0, 40))
            boxes.append(_paste_head(canvas, head, x, y, scale)[1])
    return np.asarray(canvas, dtype=np.uint8).copy(), boxes


@pytest.fixture(scope="session")
def model_paths() -> ModelPaths:
    """The verified model files; fails the test (does not skip) when they are missing."""
    try:
        return ModelPaths.resolve()
    except ModelError as exc:
        problem = str(exc)
    pytest.fail(f"the models are required (CI fetches them): {problem}", pytrace=False)


@pytest.fixture(scope="session")
def analyzer(model_paths: ModelPaths) -> Analyzer:
    """One real analyzer for the whole session (default settings, 2 threads)."""
    return Analyzer(AnalyzerConfig(threads=2, model_dir=model_paths.centerface.parent))


@pytest.fixture(scope="session")
def result_schema() -> dict[str, object]:
    schema: dict[str, object] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="session")
def box_iou() -> Callable[..., float]:
    """The IoU function, as a fixture so test modules need not import conftest."""
    return iou
