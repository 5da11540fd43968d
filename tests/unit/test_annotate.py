"""Annotated images: where labels go, what is drawn, and that no image size breaks it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_analysis.annotate import (
    annotate,
    annotated_path,
    face_label,
    place_labels,
    write_annotated,
)
from face_analysis.errors import ErrorCode
from face_analysis.results import LANDMARK_NAMES, Face, ImageResult, ResultError

Rect = tuple[int, int, int, int]


def face(
    bbox: tuple[int, int, int, int], gender: str = "Female", landmarks: bool = True, age: str = "20-30"
) -> Face:
    x1, y1, x2, y2 = bbox
    w, h = x2 - x1, y2 - y1
    points = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]
    return Face(
        bbox=bbox,
        confidence=0.9,
        landmarks={n: (x1 + px * w, y1 + py * h) for n, (px, py) in zip(LANDMARK_NAMES, points, strict=True)}
        if landmarks
        else None,
        age=age,
        age_years=25.0,
        age_confidence=0.4321,
        gender=gender,
        gender_confidence=0.8649,
    )


def result(faces: tuple[Face, ...], error: ResultError | None = None) -> ImageResult:
    return ImageResult("x.jpg", faces, 100, 100, datetime.now(), {}, {}, error=error)


def overlap(a: Rect, b: Rect) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0


def inside(rect: Rect, size: tuple[int, int]) -> bool:
    return 0 <= rect[0] < rect[2] <= size[0] and 0 <= rect[1] < rect[3] <= size[1]


def test_annotated_image_is_named_after_the_json() -> None:
    assert annotated_path(Path("out/photo.json")) == Path("out/photo.annotated.jpg")
    assert annotated_path(Path("out/a.png.json")) == Path("out/a.png.annotated.jpg")


def test_label_gives_gender_and_age_each_with_its_confidence() -> None:
    f = face((0, 0, 10, 10))
    assert face_label(f) == "F 86% · 20-30 43%"
    assert face_label(f, short=True) == "F 20-30"
    assert face_label(face((0, 0, 10, 10), gender="Male")).startswith("M ")


def test_label_goes_just_above_the_box() -> None:
    (spot,) = place_labels((400, 300), [(100, 100, 200, 220)], [(90, 20)])
    assert spot == (100, 80, 190, 100)


def test_label_goes_below_a_box_at_the_top_edge() -> None:
    (spot,) = place_labels((400, 300), [(100, 5, 200, 120)], [(90, 20)])
    assert spot == (100, 120, 190, 140)


def test_label_stays_inside_the_image_at_its_corners() -> None:
    size = (300, 200)
    for box in [(250, 50, 300, 100), (-10, 40, 30, 90), (260, 150, 300, 200), (0, 0, 40, 40)]:
        (spot,) = place_labels(size, [box], [(120, 20)])
        assert spot is not None and inside(spot, size), (box, spot)
        assert overlap(spot, box) == 0, (box, spot)


def test_a_face_filling_the_image_still_gets_a_label_inside_it() -> None:
    (spot,) = place_labels((100, 100), [(0, 0, 100, 100)], [(60, 14)])
    assert spot is not None and inside(spot, (100, 100))


def test_a_label_larger_than_the_image_is_left_out() -> None:
    assert place_labels((50, 50), [(10, 10, 40, 40)], [(80, 14)]) == [None]
    assert place_labels((50, 50), [(10, 10, 40, 40)], [None]) == [None]


def test_labels_of_a_row_of_faces_cover_no_face_and_no_other_label() -> None:
    size = (800, 300)
    boxes: list[Rect] = [(20 + i * 110, 60, 110 + i * 110, 170) for i in range(7)]
    spots = place_labels(size, boxes, [(150, 22)] * len(boxes))
    placed = [s for s in spots if s is not None]
    assert len(placed) == len(boxes)
    for i, spot in enumerate(placed):
        assert inside(spot, size)
        assert all(overlap(spot, box) == 0 for box in boxes), spot
        assert all(overlap(spot, other) == 0 for other in placed[i + 1 :]), spot


def test_a_lone_label_never_covers_its_face_when_there_is_room() -> None:
    rng = np.random.default_rng(6)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(40, 800, 2))
        x1, y1 = int(rng.integers(-20, width - 5)), int(rng.integers(-20, height - 5))
        box = (x1, y1, x1 + int(rng.integers(5, width)), y1 + int(rng.integers(5, height)))
        label = (int(rng.integers(10, 200)), int(rng.integers(8, 40)))
        (spot,) = place_labels((width, height), [box], [label])
        if label[0] > width or label[1] > height:
            assert spot is None
            continue
        assert spot is not None and inside(spot, (width, height)), (width, height, box, spot)
        room = max(box[1], 0) >= label[1] or height - min(box[3], height) >= label[1]
        if room:
            assert overlap(spot, box) == 0, (width, height, box, spot)


def test_drawing_leaves_the_face_itself_alone_but_for_its_landmarks() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    original = image.copy()
    f = face((150, 100, 250, 230))
    drawn = np.asarray(annotate(image, [f]))
    assert np.array_equal(image, original), "the input is not drawn on"
    changed = np.any(drawn != image, axis=2)
    x1, y1, x2, y2 = f.bbox
    near_landmark = np.zeros_like(changed)
    for x, y in (f.landmarks or {}).values():
        near_landmark[round(y) - 6 : round(y) + 7, round(x) - 6 : round(x) + 7] = True
    assert not changed[y1:y2, x1:x2][~near_landmark[y1:y2, x1:x2]].any(), "something was drawn over the face"
    assert changed[y1 - 1, x1:x2].all() and changed[y2, x1:x2].all(), "the box frames the face"
    assert changed[:y1].sum() > 500, "the label sits above the box"


def test_text_grows_with_the_image() -> None:
    def label_height(side: int) -> int:
        image = np.zeros((side, side, 3), np.uint8)
        s = side // 5
        drawn = np.asarray(annotate(image, [face((2 * s, 2 * s, 3 * s, 3 * s), landmarks=False)]))
        rows = np.flatnonzero(np.any(drawn[: 2 * s - 1] != 0, axis=(1, 2)))  # above the box
        return int(rows.max() - rows.min() + 1)

    small, large = label_height(400), label_height(4000)
    assert 12 <= small <= 40
    assert large >= 5 * small, "a label on a big photo stays legible when the photo is fitted to a screen"


@pytest.mark.parametrize(
    ("width", "height", "bbox"),
    [
        (1, 1, (0, 0, 1, 1)),
        (1, 1, (-50, -50, 80, 90)),
        (3, 200, (0, 10, 3, 40)),
        (30, 20, (5, 5, 25, 18)),
        (12000, 150, (5000, 20, 5100, 140)),
        (150, 12000, (20, 6000, 130, 6120)),
        (6000, 4500, (2000, 1500, 3200, 3100)),
    ],
)
def test_any_image_size_draws_without_crashing(
    width: int, height: int, bbox: tuple[int, int, int, int]
) -> None:
    image = np.full((height, width, 3), 128, np.uint8)
    drawn = annotate(image, [face(bbox), face(bbox, gender="Male", landmarks=False)])
    assert drawn.size == (width, height) and drawn.mode == "RGB"


def test_no_faces_gives_the_image_back_unchanged() -> None:
    image = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(annotate(image, [])), image)
    assert np.array_equal(np.asarray(annotate(Image.fromarray(image), [])), image)


def test_write_annotated_writes_a_jpeg_and_no_image_for_an_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.annotated.jpg"
    image = np.full((100, 100, 3), 200, np.uint8)
    write_annotated(target, image, result((face((30, 30, 70, 80)),)))
    with Image.open(target) as written:
        assert written.format == "JPEG" and written.size == (100, 100)
    assert [p.name for p in target.parent.iterdir()] == ["x.annotated.jpg"], "no temporary file left"
    write_annotated(target, None, result((), ResultError(ErrorCode.NOT_AN_IMAGE, "text")))
    assert not target.exists(), "a stale annotated image of a now failing input is removed"
