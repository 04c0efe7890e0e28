"""Committed protobuf code matches the .proto files, and imports without warnings.

`scripts/gen_protos.py --check` is what CI runs; it is exercised here on the real tree
and on a copy where the generated code was made stale on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_committed_generated_code_is_current() -> None:
    result = run("scripts/gen_protos.py", "--check")

    assert result.returncode == 0, result.stdout + result.stderr


def test_check_lists_every_stale_missing_and_orphaned_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas", ignore=shutil.ignore_patterns("__pycache__"))
    v1 = tmp_path / "schemas" / "convoy" / "v1"
    (v1 / "events_pb2.pyi").write_text("# edited by hand\n")
    (v1 / "options_pb2.py").unlink()
    (v1 / "gone_pb2.py").write_text("")

    result = run("scripts/gen_protos.py", "--check", cwd=tmp_path)

    assert result.returncode == 1
    for line in (
        "differs: schemas/convoy/v1/events_pb2.pyi",
        "missing: schemas/convoy/v1/options_pb2.py",
        "stale (no .proto): schemas/convoy/v1/gone_pb2.py",
    ):
        assert line in result.stderr


def test_generated_modules_import_without_warnings() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "schemas").rglob("*_pb2*.py")
    )
    assert modules
    result = run("-W", "error", "-c", "; ".join(f"import {m}" for m in modules))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
