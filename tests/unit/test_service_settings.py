"""The services' settings: environment parsing and the README's table of variables."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="the services extra")

from face_analysis.services.common import job_id_problem, name_problem, relative_path_problem
from face_analysis.services.settings import Settings, SettingsError

README = Path(__file__).parents[2] / "README.md"


def test_defaults_and_overrides() -> None:
    settings = Settings.from_env(
        {"FACE_ANALYSIS_MAX_IN_FLIGHT": "7", "FACE_ANALYSIS_OUTPUT_DIR": "/o", "OTHER": "x"}
    )
    assert settings.max_in_flight == 7 and settings.output_dir == Path("/o")
    assert settings.address("age-gender") == "127.0.0.1:50053"
    assert Settings.from_env({"FACE_ANALYSIS_AGE_GENDER_ADDR": "ag:1"}).address("age-gender") == "ag:1"


@pytest.mark.parametrize(
    "environ",
    [
        {"FACE_ANALYSIS_MAX_IN_FLIGHT": "many"},
        {"FACE_ANALYSIS_MAX_ATTEMPTS": "0"},
        {"FACE_ANALYSIS_KEY_PREFIX": "a b"},
        {"FACE_ANALYSIS_LOG_LEVEL": "LOUD"},
        {"FACE_ANALYSIS_IMAGE_INPUT_PORT": "70000"},
        {"FACE_ANALYSIS_DETECTOR": "dlib"},
    ],
)
def test_bad_values_are_refused_with_the_variables_name(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=r"FACE_ANALYSIS_|port"):
        Settings.from_env(environ)


def test_the_readme_documents_every_variable() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [name for name, _, _ in Settings.variables() if f"`{name}`" not in text]
    assert not missing, f"README.md's table lacks {missing}"


@pytest.mark.parametrize("value", ["../../x", "", "a/b", "a" * 65, "job id", "x\n", ".."])
def test_job_ids_are_never_paths(value: str) -> None:
    assert job_id_problem(value) is not None


def test_names_and_relative_paths() -> None:
    assert name_problem("photo 1.jpg") is None
    assert name_problem("../x") is not None and name_problem("a\x00") is not None
    assert relative_path_problem("sub/photo.json", "f") is None
    for bad in ("../x.json", "/abs.json", "a/../../x.json", "a\\b.json", ""):
        assert relative_path_problem(bad, "f") is not None
