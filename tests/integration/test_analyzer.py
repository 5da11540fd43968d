"""The real models on real images (the astronaut and pictures made from it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from numpy.typing import NDArray

from face_analysis import Analyzer, ErrorCode, ImageResult

Iou = Callable[..., float]

ODD_FORMATS = [
    "png",
    "webp",
    "bmp",
    "tiff",
    "gif",
    "cmyk_jpeg",
    "png16",
    "rgba_png",
    "grey_jpeg",
    "animated_gif",
]
BAD_INPUTS = {
    "empty": ErrorCode.EMPTY_FILE,
    "text_as_jpeg": ErrorCode.NOT_AN_IMAGE,
    "truncated_jpeg": ErrorCode.TRUNCATED_IMAGE,
    "huge_header_png": ErrorCode.TOO_MANY_PIXELS,
}


@pytest.fixture(scope="module")
def astronaut_result(analyzer: Analyzer, astronaut_path: Path) -> ImageResult:
    return analyzer.analyze(astronaut_path)


class TestAstronaut:
    def test_one_face_on_the_face(
        self, astronaut_result: ImageResult, astronaut_face: tuple[int, ...], box_iou: Iou
    ) -> None:
        assert astronaut_result.ok, astronaut_result.error
        assert (astronaut_result.width, astronaut_result.height) == (512, 512)
        (face,) = astronaut_result.faces
        assert box_iou(face.bbox, astronaut_face) > 0.5
        assert 0 < face.confidence < 1

    def test_landmarks(self, astronaut_result: ImageResult) -> None:
        (face,) = astronaut_result.faces
        assert face.landmarks is not None
        x1, y1, x2, y2 = face.bbox
        for name, (x, y) in face.landmarks.items():
            assert x1 <= x <= x2 and y1 <= y <= y2, name
        points = face.landmarks
        eyes_y = max(points["left_eye"][1], points["right_eye"][1])
        assert eyes_y < points["nose"][1] < min(points["mouth_left"][1], points["mouth_right"][1])
        assert points["left_eye"][0] < points["right_eye"][0]  # the image's left
        assert points["mouth_left"][0] < points["mouth_right"][0]

    def test_age_and_gender(self, astronaut_result: ImageResult) -> None:
        (face,) = astronaut_result.faces
        assert 20 <= face.age_years <= 60
        low = int(face.age_years // 10) * 10
        assert face.age == f"{low}-{low + 10}"
        assert face.gender in ("Male", "Female")
        assert 0 < face.age_confidence < 1
        assert 0.5 <= face.gender_confidence < 1

    def test_json_matches_the_schema(
        self, astronaut_result: ImageResult, result_schema: dict[str, object]
    ) -> None:
        data = json.loads(astronaut_result.to_json())
        jsonschema.validate(data, result_schema)
        assert data["image_id"] == "astronaut.jpg"
        assert data["error"] is None

    def test_to_json_round_trips(self, astronaut_result: ImageResult) -> None:
        data = json.loads(astronaut_result.to_json())
        assert data == astronaut_result.to_dict()
        (face,) = astronaut_result.faces
        (face_json,) = data["faces"]
        assert face_json["bbox"] == list(face.bbox)
        assert face_json["age"] == face.age
        assert face_json["gender_confidence"] == pytest.approx(face.gender_confidence, abs=1e-4)
        assert face.landmarks is not None
        assert face_json["landmarks"]["nose"] == pytest.approx(face.landmarks["nose"], abs=0.05)


def test_schema_rejects_a_broken_result(
    astronaut_result: ImageResult, result_schema: dict[str, object]
) -> None:
    # The schema test above can fail: a face without its box is not a valid result.
    data = json.loads(astronaut_result.to_json())
    del data["faces"][0]["bbox"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, result_schema)


def test_path_bytes_and_array_give_the_same_faces(
    analyzer: Analyzer, astronaut_path: Path, astronaut_rgb: NDArray[np.uint8], astronaut_result: ImageResult
) -> None:
    by_path = astronaut_result
    by_bytes = analyzer.analyze(astronaut_path.read_bytes())
    by_array = analyzer.analyze(np.array(astronaut_rgb))
    assert len(by_path.faces) == 1
    assert by_bytes.faces == by_path.faces
    assert by_array.faces == by_path.faces
    assert (by_bytes.image_id, by_array.image_id) == ("image", "image")


def test_group_picture_finds_every_face(analyzer: Analyzer, group_image: Any, box_iou: Iou) -> None:
    result = analyzer.analyze(group_image.path)
    assert result.ok, result.error
    assert len(result.faces) == len(group_image.boxes)
    for expected in group_image.boxes:
        assert max(box_iou(face.bbox, expected) for face in result.faces) > 0.5, expected


@pytest.mark.parametrize("name", ["exif6_jpeg", "exif8_jpeg"])
def test_exif_rotated_face_lands_on_the_upright_face(
    analyzer: Analyzer,
    samples: dict[str, Path],
    upright_crop: NDArray[np.uint8],
    astronaut_face: tuple[int, ...],
    box_iou: Iou,
    name: str,
) -> None:
    upright = analyzer.analyze(np.array(upright_crop))
    rotated = analyzer.analyze(samples[name])
    assert (rotated.width, rotated.height) == (upright.width, upright.height) == (512, 384)
    (expected,) = upright.faces
    (face,) = rotated.faces
    assert box_iou(face.bbox, expected.bbox) > 0.8
    assert box_iou(face.bbox, astronaut_face) > 0.5
    assert face.landmarks is not None
    assert face.landmarks["left_eye"][1] < face.landmarks["mouth_left"][1]  # upright, not sideways


@pytest.mark.parametrize("name", ODD_FORMATS)
def test_odd_formats_still_find_the_face(
    analyzer: Analyzer, samples: dict[str, Path], astronaut_face: tuple[int, ...], box_iou: Iou, name: str
) -> None:
    result = analyzer.analyze(samples[name])
    assert result.ok, result.error
    (face,) = result.faces
    assert box_iou(face.bbox, astronaut_face) > 0.7


def test_one_pixel_image_is_analysed_with_no_faces(analyzer: Analyzer, samples: dict[str, Path]) -> None:
    result = analyzer.analyze(samples["one_pixel_png"])
    assert result.ok, result.error
    assert result.faces == ()
    assert (result.width, result.height) == (1, 1)


@pytest.mark.parametrize(("name", "code"), BAD_INPUTS.items())
def test_bad_input_gives_an_error_result(
    analyzer: Analyzer, samples: dict[str, Path], result_schema: dict[str, object], name: str, code: ErrorCode
) -> None:
    for source in (samples[name], samples[name].read_bytes()):
        result = analyzer.analyze(source)
        assert not result.ok
        assert result.error is not None
        assert result.error.code is code
        assert result.faces == ()
        data = json.loads(result.to_json())
        jsonschema.validate(data, result_schema)
        assert data["error"]["code"] == code.value


@pytest.mark.parametrize(
    "source",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8)],
    ids=["2d", "float", "rgba"],
)
def test_unusable_array_gives_an_error_result(analyzer: Analyzer, source: NDArray[np.generic]) -> None:
    result = analyzer.analyze(source)  # type: ignore[arg-type]  # not uint8 RGB, on purpose
    assert result.error is not None
    assert result.error.code is ErrorCode.NOT_AN_IMAGE


def test_missing_file_gives_an_error_result(analyzer: Analyzer, tmp_path: Path) -> None:
    result = analyzer.analyze(tmp_path / "gone.jpg")
    assert result.error is not None
    assert result.error.code is ErrorCode.UNREADABLE_FILE
    assert result.image_id == "gone.jpg"
