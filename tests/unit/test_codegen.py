"""The committed gRPC/protobuf modules are what scripts/codegen.sh makes from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
GENERATED = ROOT / "src" / "face_analysis" / "services" / "generated"


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    env = {**os.environ, "CODEGEN_PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "codegen.sh"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in GENERATED.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), "run scripts/codegen.sh: the set of generated files changed"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run scripts/codegen.sh: {stale} differ from protos/"


def test_every_rpc_and_message_has_a_comment() -> None:
    for proto in (ROOT / "protos").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith(("rpc ", "message ", "service ", "enum ")):
                assert lines[i - 1].strip().startswith("//"), (
                    f"{proto.name}:{i + 1} has no comment: {stripped}"
                )
