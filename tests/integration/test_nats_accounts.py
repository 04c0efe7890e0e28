"""The accounts block `render_many` writes is what a real nats-server reads: it passes
`nats-server -t`, and a started server enforces each instance's limits as rendered
(JetStream's account info reports them) with each instance's system user in its own
account."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from eventstore import bus, natsauth
from eventstore.embedded import NatsServer, nats_server_binary
from eventstore.natslimits import AccountLimits

LIMITS = {
    "a": AccountLimits(max_connections=5, max_storage=1 << 20, max_memory=1 << 16, max_streams=4, max_consumers=10,
                       agent_max_connections=2),
    "b": AccountLimits(),
}


def block() -> str:
    instances = []
    for name, limits in LIMITS.items():
        users = (natsauth.system(name, f"pw-{name}"), natsauth.agent(name, "rt", "$2b$08$" + "x" * 53))
        instances.append(natsauth.InstanceAccounts(name, users, limits))
    return natsauth.render_many(instances)


def config_test(tmp_path: Path, extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "test.conf"
    store = json.dumps(str(tmp_path / "js"))
    path.write_text(f"listen: 127.0.0.1:-1\njetstream {{\n  store_dir: {store}\n}}\n{extra}")
    return subprocess.run([str(nats_server_binary()), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)


def test_nats_server_accepts_the_rendered_block_and_refuses_a_broken_one(tmp_path: Path) -> None:
    good = config_test(tmp_path, block())
    assert good.returncode == 0, good.stderr + good.stdout
    broken = config_test(tmp_path, block().replace("max_streams", "max_strems"))
    assert broken.returncode != 0 and "max_strems" in (broken.stderr + broken.stdout)


async def test_a_started_server_holds_each_instance_to_its_limits(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=block())
    server.start()
    try:
        seen = {}
        for name in LIMITS:
            nc = await bus.connect(server.url, name=f"sys-{name}", user=natsauth.system_user(name), password=f"pw-{name}")
            try:
                seen[name] = (await nc.jetstream().account_info()).limits
            finally:
                await nc.close()
        a = LIMITS["a"]
        assert (seen["a"].max_memory, seen["a"].max_storage) == (a.max_memory, a.max_storage)
        assert (seen["a"].max_streams, seen["a"].max_consumers) == (a.max_streams, a.max_consumers)
        assert (seen["b"].max_streams, seen["b"].max_storage) == (-1, -1)  # unlimited
    finally:
        server.stop()
