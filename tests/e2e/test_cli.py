"""The installed `face-analysis` console script, run as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import jsonschema
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from face_analysis.cli import analyze
from face_analysis.models import MODELS, ModelPaths

SCRIPT = Path(sys.executable).parent / "face-analysis"
SUMMARY = re.compile(
    r"^(?P<analysed>\d+) images analysed, (?P<faces>\d+) faces, (?P<errors>\d+) errors, "
    r"(?P<skipped>\d+) up to date \(skipped\), [\d.]+ images/s -> ",
    re.MULTILINE,
)


def run(*args: object) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the package (pip install -e .)"
    completed = subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert "Traceback" not in completed.stdout + completed.stderr, completed.stderr
    return completed


def summary(completed: subprocess.CompletedProcess[str]) -> dict[str, int]:
    match = SUMMARY.search(completed.stderr)
    assert match, f"no summary line in stderr: {completed.stderr!r}"
    return {key: int(value) for key, value in match.groupdict().items()}


def results_in(folder: Path) -> dict[str, dict[str, Any]]:
    """Every result JSON under `folder`, by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.rglob("*.json"))
    }


def small_variant(rgb: NDArray[np.uint8], rng: np.random.Generator) -> Image.Image:
    """A random crop around the astronaut's face, 128-256 px on its long side, sometimes mirrored or grey."""
    x1, y1 = rng.integers(0, 150), rng.integers(0, 40)
    x2, y2 = rng.integers(300, 513), rng.integers(210, 513)
    image = Image.fromarray(np.array(rgb[y1:y2, x1:x2]))
    long_side = int(rng.integers(128, 257))
    image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.2:
        image = image.convert("L")
    return image


def write_small_images(rgb: NDArray[np.uint8], folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        suffix = (".jpg", ".png", ".webp", ".bmp")[i % 4]
        path = folder / f"face_{i:03d}{suffix}"
        small_variant(rgb, rng).save(path)
        paths.append(path)
    return paths


def bad_files(sample_bytes: dict[str, bytes]) -> dict[str, bytes]:
    """Ten files that cannot be analysed, by file name."""
    jpeg, png = sample_bytes["jpeg"], sample_bytes["png"]
    return {
        "bad_empty.jpg": b"",
        "bad_empty_gif.gif": b"",
        "bad_text.jpg": sample_bytes["text_as_jpeg"],
        "bad_html.webp": b"<!doctype html><html><body>404 not found</body></html>\n",
        "bad_random.png": np.random.default_rng(7).bytes(4000),
        "bad_truncated.jpg": sample_bytes["truncated_jpeg"],
        "bad_quarter.jpg": jpeg[: len(jpeg) // 4],
        "bad_truncated_png.png": png[: len(png) // 2],
        "bad_huge.png": sample_bytes["huge_header_png"],
        "bad_notes.bmp": b"BM but not really a bitmap\n",
    }


def test_two_hundred_images_with_ten_bad_ones(
    model_paths: ModelPaths,
    astronaut_rgb: NDArray[np.uint8],
    sample_bytes: dict[str, bytes],
    result_schema: dict[str, Any],
    tmp_path: Path,
) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_small_images(astronaut_rgb, inputs, 190)
    bad = bad_files(sample_bytes)
    for name, data in bad.items():
        (inputs / name).write_bytes(data)

    # Detection at 256 px keeps this test fast; the images are at most 256 px anyway.
    completed = run("analyze", inputs, "-o", output, "--workers", "2", "--detect-size", "256")

    assert completed.returncode == 1, completed.stderr
    results = results_in(output)
    assert len(results) == 200
    errors = {name for name, data in results.items() if data["error"] is not None}
    assert errors == {Path(name).stem + ".json" for name in bad}
    for result in results.values():
        jsonschema.validate(result, result_schema)
    with_a_face = [name for name, data in results.items() if name.startswith("face_") and data["faces"]]
    assert len(with_a_face) >= 185  # (nearly) every crop of the astronaut shows her face
    counts = summary(completed)
    assert (counts["analysed"], counts["errors"], counts["skipped"]) == (200, 10, 0)
    assert counts["faces"] == sum(len(data["faces"]) for data in results.values())
    for name in bad:
        assert str(inputs / name) in completed.stderr  # each failure is listed


def test_clean_folder_then_up_to_date_then_overwrite(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8], tmp_path: Path
) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_small_images(astronaut_rgb, inputs, 3)

    first = run("analyze", inputs, "-o", output)
    assert first.returncode == 0, first.stderr
    assert summary(first)["analysed"] == 3
    assert summary(first)["errors"] == 0
    assert summary(first)["faces"] >= 3
    written = results_in(output)
    assert sorted(written) == ["face_000.json", "face_001.json", "face_002.json"]

    again = run("analyze", inputs, "-o", output)
    assert again.returncode == 0, again.stderr
    assert (summary(again)["analysed"], summary(again)["skipped"]) == (0, 3)
    assert results_in(output) == written

    newer = inputs / "face_001.png"
    os.utime(newer, (newer.stat().st_atime, newer.stat().st_mtime + 60))
    touched = run("analyze", inputs, "-o", output)
    assert (summary(touched)["analysed"], summary(touched)["skipped"]) == (1, 2)

    redone = run("analyze", inputs, "-o", output, "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert (summary(redone)["analysed"], summary(redone)["skipped"]) == (3, 0)
    after = results_in(output)
    for name, data in after.items():
        assert data["processing_time"] != written[name]["processing_time"]
        assert data["faces"] == written[name]["faces"]


def test_error_results_whose_cause_may_have_passed_are_tried_again(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8], tmp_path: Path
) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_small_images(astronaut_rgb, inputs, 2)
    (inputs / "notes.jpg").write_text("not an image")
    first = run("analyze", inputs, "-o", output)
    assert first.returncode == 1
    # As if a hosted detector had been down for face_000 during the first run.
    stale = output / "face_000.json"
    data = json.loads(stale.read_text())
    data.update(faces=[], error={"code": "detector_unavailable", "message": "HTTP 503, 3 tries"})
    stale.write_text(json.dumps(data))

    again = run("analyze", inputs, "-o", output)

    # face_000 again (now analysed), face_001 and notes.jpg (not an image: final) skipped.
    assert (summary(again)["analysed"], summary(again)["skipped"]) == (1, 2)
    assert json.loads(stale.read_text())["error"] is None
    assert json.loads((output / "notes.json").read_text())["error"]["code"] == "not_an_image"


def test_same_base_name_gets_two_results(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8], tmp_path: Path
) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = Image.fromarray(np.array(astronaut_rgb)).resize((256, 256))
    image.save(inputs / "a.jpg")
    image.save(inputs / "a.png")

    completed = run("analyze", inputs, "-o", output)

    assert completed.returncode == 0, completed.stderr
    results = results_in(output)
    assert sorted(results) == ["a.jpg.json", "a.png.json"]
    assert results["a.jpg.json"]["image_id"] == "a.jpg"
    assert results["a.png.json"]["image_id"] == "a.png"
    assert all(len(data["faces"]) == 1 for data in results.values())


def test_recursive_mirrors_sub_folders(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8], tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    image = Image.fromarray(np.array(astronaut_rgb)).resize((160, 160))
    for name in ("top.jpg", "sub/x.png", "sub/deeper/y.webp"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(inputs / name)

    flat = run("analyze", inputs, "-o", tmp_path / "flat")
    deep = run("analyze", inputs, "-o", tmp_path / "deep", "--recursive")

    assert (flat.returncode, deep.returncode) == (0, 0), flat.stderr + deep.stderr
    assert sorted(results_in(tmp_path / "flat")) == ["top.json"]
    results = results_in(tmp_path / "deep")
    assert sorted(results) == ["sub/deeper/y.json", "sub/x.json", "top.json"]
    assert results["sub/deeper/y.json"]["image_id"] == "sub/deeper/y.webp"


@pytest.mark.parametrize("workers", [1, 2])
def test_empty_model_dir_is_a_one_line_error(astronaut_path: Path, tmp_path: Path, workers: int) -> None:
    inputs, models = tmp_path / "in", tmp_path / "models"
    inputs.mkdir()
    models.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (inputs / name).write_bytes(astronaut_path.read_bytes())

    completed = run("analyze", inputs, "-o", tmp_path / "out", "--model-dir", models, "--workers", workers)

    assert completed.returncode == 3
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "face-analysis models fetch" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_int8_without_the_int8_model_is_a_one_line_error(
    astronaut_path: Path, model_paths: ModelPaths, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for spec in MODELS.values():  # the three verified models, but no centerface-int8.onnx
        (models / spec.filename).symlink_to(model_paths.centerface.parent / spec.filename)

    completed = run(
        "analyze", astronaut_path, "-o", tmp_path / "out", "--model-dir", models, "--precision", "int8"
    )

    assert completed.returncode == 3
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "face-analysis models quantize" in lines[0]


def test_help_explains_every_option() -> None:
    completed = run("analyze", "--help")
    assert completed.returncode == 0
    documented = [
        "--output",
        "--recursive",
        "--workers",
        "--detect-size",
        "--min-confidence",
        "--overwrite",
        "--model-dir",
        "--help",
    ]
    options = [opt for param in analyze.params if isinstance(param, click.Option) for opt in param.opts]
    for option in {*documented, *options}:
        assert option in completed.stdout, option
    for param in analyze.params:
        if isinstance(param, click.Option):
            assert param.help, f"{param.name} has no help text"


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    completed = run("analyze", missing, "-o", tmp_path / "out")
    assert completed.returncode == 2
    assert "does not exist" in completed.stderr
    assert str(missing) in completed.stderr
