"""`python -m tests.k8s_emulator --port 8001`: a standalone emulator (auto-ticking) for poking
at it with kubectl or the client; prints the kubeconfig path and serves until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from tests.k8s_emulator.emulator import Emulator


async def _serve(port: int, tick: float, kubeconfig: Path) -> None:
    async with Emulator(port=port, auto_tick=tick) as emulator:
        emulator.write_kubeconfig(kubeconfig)
        print(f"Kubernetes API emulator on {emulator.url}; KUBECONFIG={kubeconfig}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tick", type=float, default=1.0, help="real seconds between ticks (one emulator second each)")
    parser.add_argument("--kubeconfig", type=Path, default=Path(tempfile.gettempdir()) / "k8s-emulator.kubeconfig")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.tick, args.kubeconfig))


if __name__ == "__main__":
    main()
