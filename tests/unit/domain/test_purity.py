"""The domain core imports no I/O library: only the standard library, protobuf, the
generated schemas and the pure parts of the event store (DESIGN.md, STYLE.md #9)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[3] / "services" / "api" / "domain"
ALLOWED_FIRST_PARTY = (
    "services.api.domain", "schemas.convoy.v1", "eventstore.errors", "eventstore.types",
    "services.principals",  # pure: principal names, shared with the planner's gates
    "services.registry.reference", "services.registry.selection",  # pure: image references and tag selection
    "services.expressions",  # pure: the gate expression language, shared with the gatekeeper
    "services.resourceenv",  # pure: resource attributes as environment, shared with the planner's render
)


def imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda p: p.name)
def test_domain_module_imports_are_pure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top == "google" and name.startswith("google.protobuf"):
            continue
        assert name.startswith(ALLOWED_FIRST_PARTY), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda p: p.name)
def test_domain_modules_are_small_and_say_why(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) <= 400
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} needs a module docstring"


def test_importing_the_domain_loads_no_io_library() -> None:
    # In a fresh interpreter: this test process already imported drivers via conftest.
    code = (
        "import sys, services.api.domain; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncpg', 'nats', 'grpc', 'kubernetes_asyncio', 'socket', 'ssl', 'subprocess')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=DOMAIN.parents[2])
    assert out.stdout.strip() == "[]"
