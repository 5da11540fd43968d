"""Draw a result on its image: each face's box, its 5 landmarks and a label.

Usage::

    result, image = Analyzer().analyze_with_image("photo.jpg")
    annotate(image, result.faces).save("photo.annotated.jpg")

The label reads ``F 86% · 20-30 22%``: the gender's initial and its confidence, then the age
decade and its confidence (the calibrated probabilities of the JSON, as percentages). The box
and label colour also show the gender (orange: female, blue: male). Sizes scale with the image
and the faces, so labels stay legible when a photo of any size is viewed fitted to a screen.
Each label sits just above its box, or below it when there is no room above, kept inside the
image and off every face where the image leaves room for that; box lines are drawn outside
the box so they never hide its edge.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .imaging import RGBImage
from .results import Face, ImageResult, write_atomic

__all__ = [
    "ANNOTATED_SUFFIX",
    "Rect",
    "annotate",
    "annotated_path",
    "face_label",
    "gender_colour",
    "label_text",
    "place_labels",
    "write_annotated",
]

ANNOTATED_SUFFIX = ".annotated.jpg"

Rect = tuple[int, int, int, int]
"""x1, y1, x2, y2 in pixels, half-open: the pixels x1 <= x < x2, y1 <= y < y2."""

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

_COLOURS = {"F": (255, 150, 60), "M": (70, 170, 255)}
_OTHER_COLOUR = (255, 215, 70)


def gender_colour(gender: str) -> tuple[int, int, int]:
    """The RGB colour of a face of `gender` (Female, Male, anything else), in images and reports."""
    return _COLOURS.get(gender[:1].upper(), _OTHER_COLOUR)


_INK = (16, 16, 16)
_MIN_FONT = 7
# JPEG cannot store a side above 65535 pixels.
_JPEG_MAX_SIDE = 65_500


def annotated_path(json_path: Path) -> Path:
    """Where the annotated image of a result goes: `photo.json` -> `photo.annotated.jpg`."""
    name = json_path.name
    base = name.removesuffix(".json")
    return json_path.with_name(base + ANNOTATED_SUFFIX)


def face_label(face: Face, short: bool = False) -> str:
    """`F 86% · 20-30 22%` (gender, its confidence, age decade, its confidence); short: `F 20-30`."""
    if short:
        return f"{face.gender[:1].upper() or '?'} {face.age}"
    return label_text(face.gender, face.gender_confidence, face.age, face.age_confidence)


def label_text(gender: str, gender_confidence: float, age: str, age_confidence: float) -> str:
    """The label of a face from its JSON values: `F 86% · 20-30 22%`."""
    return f"{gender[:1].upper() or '?'} {gender_confidence:.0%} · {age} {age_confidence:.0%}"


@dataclass(frozen=True, slots=True)
class _Style:
    line: int  # box line width
    dot: int  # landmark radius


def _style(width: int, height: int, box: Rect) -> _Style:
    long_side = max(width, height)
    box_side = min(box[2] - box[0], box[3] - box[1])
    # Visible when the whole image is fitted to a screen, thicker for big faces, but never a
    # frame heavier than an eighth of the face.
    line = min(max(long_side / 700, box_side / 45), max(1.0, box_side / 8))
    dot = min(max(box_side / 40, long_side / 1200), box_side / 14)
    return _Style(line=max(1, round(line)), dot=max(1, round(dot)))


def _font_size(width: int, height: int, faces: Sequence[Face]) -> int:
    """One label size per image: ~1/6 of the median face height, within what stays legible.

    The floor keeps text ~13 px tall when the image is fitted to a 1200 px screen; the ceiling
    stops a face filling the photo from getting a headline.
    """
    long_side = max(width, height)
    low = max(11.0, 0.011 * long_side)
    high = max(low, 0.03 * long_side)
    median_height = statistics.median(f.bbox[3] - f.bbox[1] for f in faces) if faces else 0
    return round(min(max(0.16 * median_height, low), high))


@functools.lru_cache(maxsize=64)
def _font(size: int) -> Font:
    """DejaVu Sans Bold if the system has it, else Pillow's built-in scalable font."""
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _overlap(a: Rect, b: Rect) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0


def _candidates(box: Rect, size: tuple[int, int], image_size: tuple[int, int]) -> list[Rect]:
    """Spots for a label of `size` next to `box` (its outer edge), clamped into the image."""
    (w, h), (width, height) = size, image_size
    x1, y1, x2, y2 = box
    aligned = (x1, x2 - w, (x1 + x2 - w) // 2)  # left-aligned, right-aligned, centred
    spots = [(x, y1 - h) for x in aligned] + [(x, y2) for x in aligned]  # above, then below
    spots += [(x2, y1), (x1 - w, y1), (x2, y2 - h), (x1 - w, y2 - h)]  # beside, at the top or bottom
    rects = []
    for x, y in spots:
        x = min(max(x, 0), width - w)
        y = min(max(y, 0), height - h)
        rects.append((x, y, x + w, y + h))
    return rects


def place_labels(
    image_size: tuple[int, int], boxes: Sequence[Rect], sizes: Sequence[tuple[int, int] | None]
) -> list[Rect | None]:
    """Where each box's label goes: inside the image, above the box or else below it.

    `boxes` are the boxes' outer edges (lines included); `sizes` the labels' (width, height),
    None for a label not drawn. Spots off every face come first, then off other labels; when
    the image leaves no such spot (a face filling it) the label covers as little face as it can.
    A label larger than the image is not placed (None).
    """
    width, height = image_size
    placed: list[Rect | None] = [None] * len(boxes)
    taken: list[Rect] = []
    # Big faces first: they have the most room around them and the most obvious spot.
    order = sorted(
        range(len(boxes)), key=lambda i: -(boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
    )
    for i in order:
        size = sizes[i]
        if size is None or size[0] > width or size[1] > height or min(size) <= 0:
            continue
        best: tuple[int, int, Rect] | None = None
        for rank, rect in enumerate(_candidates(boxes[i], size, image_size)):
            on_faces = sum(_overlap(rect, box) for box in boxes)
            on_labels = sum(_overlap(rect, other) for other in taken)
            cost = on_faces * 1000 + on_labels
            if best is None or (cost, rank) < best[:2]:
                best = (cost, rank, rect)
            if cost == 0:
                break
        assert best is not None
        placed[i] = best[2]
        taken.append(best[2])
    return placed


def _text_size(text: str, font: Font, pad: int) -> tuple[int, int]:
    left, _, right, _ = font.getbbox(text)
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
    else:  # Pillow without FreeType: its fixed bitmap font
        ascent, descent = font.getbbox("Ag")[3], 0
    return round(right - left) + 2 * pad, round(ascent + descent) + pad


def _fit_label(
    face: Face, font_size: int, width: int, height: int
) -> tuple[str, Font, int, tuple[int, int]] | None:
    """The label text, font, padding and size that fit the image: full, else short, else smaller."""
    font = _font(font_size)
    pad = max(1, round(font_size * 0.3))
    for short in (False, True):
        text = face_label(face, short)
        w, h = _text_size(text, font, pad)
        if w <= width and h <= height:
            return text, font, pad, (w, h)
    scale = min(width / w, height / h)
    size = int(font_size * scale)
    while size >= _MIN_FONT:
        font, pad = _font(size), max(1, round(size * 0.3))
        w, h = _text_size(text, font, pad)
        if w <= width and h <= height:
            return text, font, pad, (w, h)
        size -= 1
    return None


def annotate(image: RGBImage | Image.Image, faces: Sequence[Face]) -> Image.Image:
    """A copy of the image with every face's box, landmarks and label drawn on it."""
    # Both make a copy: Pillow cannot share an RGB array's memory, and convert() always copies.
    canvas = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    width, height = canvas.size
    if not faces:
        return canvas
    draw = ImageDraw.Draw(canvas)
    font_size = _font_size(width, height, faces)
    styles = [_style(width, height, face.bbox) for face in faces]
    outer = [
        (f.bbox[0] - s.line, f.bbox[1] - s.line, f.bbox[2] + s.line, f.bbox[3] + s.line)
        for f, s in zip(faces, styles, strict=True)
    ]
    labels = [_fit_label(face, font_size, width, height) for face in faces]
    sizes = [None if label is None else label[3] for label in labels]
    spots = place_labels((width, height), outer, sizes)

    colours = [gender_colour(face.gender) for face in faces]
    for colour, face, style, box in zip(colours, faces, styles, outer, strict=True):
        if style.line >= 3:  # a dark rim keeps a light line visible on a light background
            draw.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline=_INK, width=1)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=colour, width=style.line)
        for x, y in (face.landmarks or {}).values():
            r = style.dot
            if r < 2:  # a tiny face: plain dots, an outline would hide it
                draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=colour)
            else:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=_INK, width=max(1, r // 3))
    for colour, label, spot in zip(colours, labels, spots, strict=True):
        if label is None or spot is None:
            continue
        text, font, pad, _ = label
        draw.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=colour)
        left = font.getbbox(text)[0]
        draw.text((spot[0] + pad - left, spot[1] + pad // 2), text, font=font, fill=_INK)
    return canvas


def write_annotated(path: Path, image: RGBImage | Image.Image | None, result: ImageResult) -> None:
    """Write the annotated image as JPEG, atomically; an error result has none (a stale one goes)."""
    if result.error is not None or image is None:
        path.unlink(missing_ok=True)
        return
    canvas = annotate(image, result.faces)
    if max(canvas.size) > _JPEG_MAX_SIDE:
        canvas.thumbnail((_JPEG_MAX_SIDE, _JPEG_MAX_SIDE))
    write_atomic(path, lambda f: canvas.save(f, "JPEG", quality=90, subsampling=0))
