"""Result JSON, output naming, the atomic writer and the decade ranges."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from face_analysis import ErrorCode, Face, ImageResult, ResultError
from face_analysis.attributes.age_gender import age_range_of
from face_analysis.batch import PlanError, plan_jobs
from face_analysis.results import LANDMARK_NAMES, output_names, write_json_atomic

SEED_KEYS = {"image_id", "faces", "processing_time"}
SEED_FACE_KEYS = {"bbox", "confidence", "age", "age_confidence", "gender", "gender_confidence"}


def names(*paths: str) -> dict[str, str]:
    result = output_names(PurePosixPath(p) for p in paths)
    return {str(k): str(v) for k, v in result.items()}


def make_result(error: ResultError | None = None) -> ImageResult:
    face = Face(
        bbox=(10, 20, 110, 140),
        confidence=0.912345,
        landmarks={name: (30.04 + i, 60.06 + i) for i, name in enumerate(LANDMARK_NAMES)},
        age="20-30",
        age_years=26.44,
        age_confidence=0.851234,
        gender="Female",
        gender_confidence=0.91,
    )
    return ImageResult(
        image_id="sub/photo.jpg",
        faces=() if error else (face,),
        width=None if error else 640,
        height=None if error else 480,
        processing_time=datetime(2023, 8, 14, 15, 30, 45, 123456),
        models={"centerface": "centerface.onnx@0123456789ab"},
        settings={"detect_size": 640},
        timings_ms={"total": 12.3456},
        error=error,
    )


class TestOutputNames:
    def test_seed_rule_replaces_the_extension(self) -> None:
        assert names("a.jpg", "b.png") == {"a.jpg": "a.json", "b.png": "b.json"}

    def test_same_base_name_keeps_both_extensions(self) -> None:
        assert names("a.jpg", "a.png", "b.jpg") == {
            "a.jpg": "a.jpg.json",
            "a.png": "a.png.json",
            "b.jpg": "b.json",
        }

    def test_same_base_name_in_different_folders_do_not_clash(self) -> None:
        assert names("x/a.jpg", "y/a.png") == {"x/a.jpg": "x/a.json", "y/a.png": "y/a.json"}

    def test_plan_refuses_two_inputs_writing_one_result(self, tmp_path: Path) -> None:
        for folder in ("d1", "d2"):
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "a.jpg").write_bytes(b"x")
        with pytest.raises(PlanError, match="would both write"):
            plan_jobs([tmp_path / "d1" / "a.jpg", tmp_path / "d2" / "a.jpg"], tmp_path / "out")

    def test_plan_names_and_ids(self, tmp_path: Path) -> None:
        (tmp_path / "in" / "sub").mkdir(parents=True)
        for name in ("a.jpg", "a.png", "sub/b.webp", "notes.txt", ".hidden.jpg"):
            (tmp_path / "in" / name).write_bytes(b"x")
        jobs = plan_jobs([tmp_path / "in"], tmp_path / "out", recursive=True)
        assert {job.image_id: job.output.relative_to(tmp_path / "out").as_posix() for job in jobs} == {
            "a.jpg": "a.jpg.json",
            "a.png": "a.png.json",
            "sub/b.webp": "sub/b.json",
        }


class TestJson:
    def test_seed_keys_and_additions(self) -> None:
        data = json.loads(make_result().to_json())
        assert data.keys() >= SEED_KEYS
        assert data.keys() >= {"schema_version", "width", "height", "models", "timings_ms", "error"}
        assert data["image_id"] == "sub/photo.jpg"
        assert data["error"] is None
        assert datetime.fromisoformat(data["processing_time"]) == datetime(2023, 8, 14, 15, 30, 45, 123456)
        (face,) = data["faces"]
        assert face.keys() >= SEED_FACE_KEYS | {"landmarks", "age_years"}
        assert face["bbox"] == [10, 20, 110, 140]
        assert face["age"] == "20-30"
        assert face["gender"] == "Female"
        assert face["confidence"] == pytest.approx(0.9123)
        assert face["age_years"] == pytest.approx(26.4)
        assert list(face["landmarks"]) == list(LANDMARK_NAMES)
        assert face["landmarks"]["left_eye"] == [30.0, 60.1]

    def test_error_result(self) -> None:
        result = make_result(ResultError(ErrorCode.TRUNCATED_IMAGE, "the image data is truncated"))
        data = json.loads(result.to_json())
        assert not result.ok
        assert data["faces"] == []
        assert data["error"] == {"code": "truncated_image", "message": "the image data is truncated"}

    def test_to_json_is_to_dict(self) -> None:
        result = make_result()
        assert json.loads(result.to_json()) == result.to_dict()


class TestAtomicWriter:
    def test_writes_and_replaces_without_leftovers(self, tmp_path: Path) -> None:
        target = tmp_path / "deep" / "er" / "a.json"
        write_json_atomic(target, '{"v": 1}\n')
        write_json_atomic(target, '{"v": 2}\n')
        assert json.loads(target.read_text(encoding="utf-8")) == {"v": 2}
        assert [p.name for p in target.parent.iterdir()] == ["a.json"]

    def test_failed_write_keeps_the_old_file_and_no_temp_file(self, tmp_path: Path) -> None:
        target = tmp_path / "a.json"
        write_json_atomic(target, '{"v": 1}\n')
        with pytest.raises(UnicodeEncodeError):
            write_json_atomic(target, '{"v": "\ud800"}')  # a lone surrogate cannot be UTF-8
        assert target.read_text(encoding="utf-8") == '{"v": 1}\n'
        assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize(
    ("years", "decade"),
    [
        (0.25, "0-10"),
        (9.99, "0-10"),
        (10.0, "10-20"),
        (19.99, "10-20"),
        (20.0, "20-30"),
        (26.4, "20-30"),
        (79.9, "70-80"),
        (80.0, "80-90"),
    ],
)
def test_age_range_of(years: float, decade: str) -> None:
    assert age_range_of(years) == decade


def test_schema_knows_every_error_code(result_schema: dict[str, Any]) -> None:
    error_object = next(
        option for option in result_schema["properties"]["error"]["oneOf"] if option["type"] == "object"
    )
    assert set(error_object["properties"]["code"]["enum"]) == {code.value for code in ErrorCode}


def test_schema_version_matches(result_schema: dict[str, Any]) -> None:
    assert (
        result_schema["properties"]["schema_version"]["const"]
        == json.loads(make_result().to_json())["schema_version"]
    )
