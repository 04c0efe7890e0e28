"""docs/cli.md is generated from the CLI (scripts/gen_cli_docs.py) and must be current.

Like the generated protobuf code, the reference is committed, so it can go stale: this
fails whenever a command, option or help text changed without regenerating it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import typer.main

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_cli_docs.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_current() -> None:
    expected = generator().render()
    actual = (ROOT / "docs" / "cli.md").read_text()
    assert actual == expected, "docs/cli.md is stale: run `.venv/bin/python scripts/gen_cli_docs.py` and commit it"


def test_every_command_and_option_is_documented() -> None:
    text = generator().render()
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="convoy")
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        command = root.get_command(ctx, name)  # type: ignore[attr-defined]
        assert f"`convoy {name}`" in text
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in text, f"convoy {name}: {opt} missing"
        for sub in getattr(command, "list_commands", lambda _: [])(ctx):
            assert f"`convoy {name} {sub}`" in text


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    module = generator()
    assert module.OUTPUT == ROOT / "docs" / "cli.md"
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # A copy of the script whose output is a stale file: --check fails and writes nothing.
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "gen_cli_docs.py").write_text(SCRIPT.read_text().replace("sys.path.insert(0, str(ROOT))", f"sys.path.insert(0, {str(ROOT)!r})"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("# stale\n")
    stale = subprocess.run([sys.executable, str(scripts / "gen_cli_docs.py"), "--check"], capture_output=True, text=True)
    assert stale.returncode == 1
    assert "stale" in stale.stderr
    assert (tmp_path / "docs" / "cli.md").read_text() == "# stale\n"
