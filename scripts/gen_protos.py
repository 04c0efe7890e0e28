"""Regenerate the Python code for every .proto under schemas/, or check it is current.

Generated modules are committed so that installing Convoy needs no protoc, which means
they can go stale. CI runs `gen_protos.py --check`: it generates into a temporary
directory with the pinned grpcio-tools / mypy-protobuf and fails, listing each file,
when the committed code differs, is missing, or was left behind by a deleted .proto.
Without `--check` the same output is copied into the tree (files are only rewritten
when their content changes).

Per `x.proto`: `x_pb2.py` and `x_pb2.pyi` (mypy-protobuf); files that declare a gRPC
service also get `x_pb2_grpc.py` and `x_pb2_grpc.pyi`. Protoc runs from the repository
root with `-I .`, so `schemas/convoy/v1/events.proto` becomes
`schemas.convoy.v1.events_pb2`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = "schemas"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """A protoc plugin installed next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; install the test extras: pip install -e '.[test]'")
    return found


def _protoc(args: list[str]) -> None:
    """Run grpc_tools' bundled protoc from the repository root."""
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({' '.join(command)}):\n{result.stderr}")


def proto_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / SCHEMAS).rglob("*.proto"))


def generate(out: Path, protos: list[str]) -> None:
    """Write every generated file for `protos` under `out` (mirroring the tree)."""
    descriptors = out / "descriptors.binpb"
    mypy = f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}"
    _protoc([mypy, f"--python_out={out}", f"--mypy_out={out}", f"--descriptor_set_out={descriptors}", *protos])
    file_set = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    descriptors.unlink()
    with_services = sorted(f.name for f in file_set.file if f.service)
    if with_services:
        mypy_grpc = f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}"
        _protoc([mypy_grpc, f"--grpc_python_out={out}", f"--mypy_grpc_out={out}", *with_services])


def _generated_in(base: Path) -> set[str]:
    return {
        p.relative_to(base).as_posix()
        for p in (base / SCHEMAS).rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def _packages_missing_init(protos: list[str]) -> list[str]:
    """Every directory from schemas/ down to a .proto must be a Python package."""
    needed = {(Path(proto).parent / "__init__.py").as_posix() for proto in protos}
    for init in list(needed):
        parts = Path(init).parent.parts
        needed |= {Path(*parts[:i], "__init__.py").as_posix() for i in range(1, len(parts))}
    return sorted(init for init in needed if not (ROOT / init).exists())


def compare(fresh: Path, protos: list[str]) -> list[str]:
    """Problems with the committed generated code, one line per file."""
    wanted, committed = _generated_in(fresh), _generated_in(ROOT)
    problems = [f"missing: {path}" for path in sorted(wanted - committed)]
    problems += [
        f"differs: {path}"
        for path in sorted(wanted & committed)
        if (fresh / path).read_bytes() != (ROOT / path).read_bytes()
    ]
    problems += [f"stale (no .proto): {path}" for path in sorted(committed - wanted)]
    problems += [f"missing: {init}" for init in _packages_missing_init(protos)]
    return problems


def sync(fresh: Path, protos: list[str]) -> list[str]:
    """Make the tree match `fresh`; return what changed."""
    changed = compare(fresh, protos)
    wanted = _generated_in(fresh)
    for path in sorted(wanted):
        target = ROOT / path
        if not target.exists() or target.read_bytes() != (fresh / path).read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((fresh / path).read_bytes())
    for path in sorted(_generated_in(ROOT) - wanted):
        (ROOT / path).unlink()
    for init in _packages_missing_init(protos):
        (ROOT / init).write_text('"""Generated protobuf code; see scripts/gen_protos.py."""\n')
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if committed generated code is not current")
    args = parser.parse_args(argv)
    protos = proto_files()
    with tempfile.TemporaryDirectory(prefix="convoy-protos-") as tmp:
        fresh = Path(tmp)
        if protos:
            generate(fresh, protos)
        if args.check:
            problems = compare(fresh, protos)
            if problems:
                print("generated protobuf code is not current:", *problems, sep="\n  ", file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"generated code is current ({len(protos)} .proto files)")
            return 0
        changed = sync(fresh, protos)
        print(*(changed or ["generated code already current"]), sep="\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
