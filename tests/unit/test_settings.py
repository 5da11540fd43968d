"""The one settings object: every option defined once, and everything else derived or checked.

The command line's options come from `AnalyzerConfig`; the README's tables, docker-compose.yml's
defaults and .env.example are checked against the settings here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from face_analysis.cli import analyze, main
from face_analysis.errors import SettingsError
from face_analysis.settings import AnalyzerConfig, Option, RoboflowSettings

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
pytest.importorskip("grpc", reason="the services extra")

from face_analysis.services.settings import Settings  # noqa: E402

# Options Compose does not pass through, and why.
NOT_IN_COMPOSE = {
    "FACE_ANALYSIS_CONSUMER_NAME": "per replica: the default (host-pid) differs in each container",
    "FACE_ANALYSIS_MODEL_DIR": "the image's own /opt/models",
    **{o.env: "the stack's wiring: the image's default" for o in Settings.options() if "port" in o.name},
}


def _value(option: Option, text: str) -> Any:
    """What the settings make of `text` for `option` (the default when it is empty)."""
    value: Any = Settings.from_env({option.env: text})
    for name in option.path:
        value = getattr(value, name)
    return value


def _compose_defaults() -> tuple[dict[str, str], set[str]]:
    """docker-compose.yml's `VAR: ${VAR:-default}` pass-throughs, and the variables it fixes."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    passed = dict(re.findall(r"^\s+(\w+): \$\{\1:-([^}]*)\}\s*$", text, re.MULTILINE))
    fixed = set(re.findall(r"^\s+((?:FACE_ANALYSIS|ROBOFLOW)_\w+): (?!\$\{)", text, re.MULTILINE))
    return passed, fixed


def test_every_option_has_a_unique_variable_and_flag() -> None:
    options = Settings.options()
    assert len({o.env for o in options}) == len(options)
    assert len({o.flag for o in AnalyzerConfig.options()}) == len(AnalyzerConfig.options())
    assert {o.env for o in AnalyzerConfig.options()} <= {o.env for o in options}  # the services read them too
    assert [o.env for o in RoboflowSettings.options()] == [
        "ROBOFLOW_MODEL",
        "ROBOFLOW_VERSION",
        "ROBOFLOW_API_URL",
        "ROBOFLOW_CLASSES",
    ]


def test_the_command_line_has_every_analysis_option_with_its_default_and_variable() -> None:
    params = {p.name: p for p in analyze.params}
    for option in AnalyzerConfig.options():
        param = params[option.name]
        assert option.flag in param.opts and param.envvar == option.env
        assert param.default == (None if option.default in (None, ()) else option.default)
        assert option.env in (param.help or "")


def test_environment_and_flags_give_the_same_settings(tmp_path: Path) -> None:
    env = {"FACE_ANALYSIS_DETECT_SIZE": "1024", "FACE_ANALYSIS_PRESET": "accurate", "ROBOFLOW_CLASSES": "a b"}
    config = AnalyzerConfig.from_env(env)
    assert (config.detect_size, config.preset, config.roboflow.classes) == (1024, "accurate", ("a", "b"))
    assert Settings.from_env(env).analysis == config


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FACE_ANALYSIS_DETECT_SIZE": "12"}, "FACE_ANALYSIS_DETECT_SIZE='12': Input should be greater"),
        ({"FACE_ANALYSIS_PRECISION": "int4"}, "FACE_ANALYSIS_PRECISION='int4': Input should be"),
        ({"ROBOFLOW_VERSION": "x"}, "ROBOFLOW_VERSION='x': Input should be a valid integer"),
        ({"FACE_ANALYSIS_DETECTOR": "roboflow"}, "the Roboflow detector needs a model id and a version"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_bad_flag_is_a_usage_error_naming_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["analyze", str(tmp_path), "-o", str(tmp_path), "--roboflow-model", "a b"]
    )
    assert result.exit_code == 2 and "--roboflow-model: String should match pattern" in result.output


def _readme_defaults() -> dict[str, str]:
    """Variable -> default, from the README's tables headed `| variable | default | ...`."""
    rows: dict[str, str] = {}
    in_table = False
    for line in README.read_text(encoding="utf-8").splitlines():
        in_table = line.startswith("| variable | default |") or (in_table and line.startswith("|"))
        if in_table and (match := re.match(r"^\| `(\w+)` \| `?([^`|]*?)`? \|", line)):
            rows[match[1]] = match[2]
    return rows


def test_the_readme_tables_give_each_variable_its_default() -> None:
    rows = _readme_defaults()
    for option in Settings.options():
        if option.env in rows:
            assert _value(option, rows[option.env]) == _value(option, ""), option.env
    missing = {o.env for o in Settings.options() if o.path[0] != "analysis"} - set(rows)
    assert not missing, f"README.md's services table lacks {missing}"


def test_compose_passes_every_option_through_with_its_default() -> None:
    passed, fixed = _compose_defaults()
    for option in Settings.options():
        if option.env in NOT_IN_COMPOSE or option.env in fixed:
            continue
        assert option.env in passed, f"docker-compose.yml does not pass {option.env} through"
        assert _value(option, passed[option.env]) == _value(option, ""), f"{option.env}'s default differs"


def test_env_example_lists_what_compose_passes_with_the_defaults() -> None:
    listed = dict(
        re.findall(r"^((?:FACE_ANALYSIS|ROBOFLOW)_\w+)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    )
    passed, _ = _compose_defaults()
    options = {o.env: o for o in Settings.options()}
    for name in passed.keys() & options.keys():
        assert name in listed, f".env.example does not list {name}"
        assert _value(options[name], listed[name]) == _value(options[name], ""), name
