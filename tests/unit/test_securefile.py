"""Secret files are owner-only from their first byte and replaced atomically
(eventstore.securefile), and every writer of a secret file uses them."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import localstate
from cli.commands import instances as instances_command
from eventstore import natsauth, securefile
from eventstore.errors import InvalidInput
from schemas.convoy.v1 import resources_pb2
from services.agent import intents
from services.agent.runtimes.base import WorkloadKey
from services.agent.runtimes.localstate import StateStore
from services.agent.state import StateFile
from services.api.auth import write_admin_secret
from services.secrets.keyring import FileKeyring

SECRET = "s3cr3t-" + "x" * 40


@pytest.fixture
def created_modes() -> Iterator[list[tuple[Path, int]]]:
    """The mode of every temporary file `write_private` creates, at creation (before a
    byte is written)."""
    seen: list[tuple[Path, int]] = []
    securefile._created_hook = lambda path: seen.append((path, stat.S_IMODE(os.stat(path).st_mode)))
    try:
        yield seen
    finally:
        securefile._created_hook = None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_temporary_file_is_0600_from_creation_whatever_the_umask(tmp_path: Path, created_modes: list) -> None:
    old = os.umask(0)  # a umask that would leave a plain open() world-readable
    try:
        securefile.write_private(tmp_path / "secret", SECRET)
    finally:
        os.umask(old)
    assert created_modes and all(m == 0o600 for _, m in created_modes), created_modes
    assert created_modes[0][0].parent == tmp_path  # beside the target: the rename is atomic
    assert mode(tmp_path / "secret") == 0o600
    assert (tmp_path / "secret").read_text() == SECRET
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporary left


def test_replacing_a_wider_file_never_shows_its_new_content_with_the_old_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o644)  # an old, too-open file (written before this fix)
    securefile.write_private(target, SECRET)
    assert mode(target) == 0o600 and target.read_text() == SECRET


def test_a_reader_racing_the_writer_sees_old_or_new_content_and_always_0600(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    securefile.write_private(target, "v0" * 1000)
    done = threading.Event()
    observed: list[tuple[int, str]] = []

    def read() -> None:
        while not done.is_set():
            try:
                fd = os.open(target, os.O_RDONLY)
            except FileNotFoundError:
                observed.append((-1, ""))
                continue
            try:
                observed.append((stat.S_IMODE(os.fstat(fd).st_mode), os.read(fd, 10_000).decode()))
            finally:
                os.close(fd)
            for other in tmp_path.iterdir():  # temporaries included, whenever one is seen
                try:
                    observed.append((stat.S_IMODE(other.stat().st_mode), "v0"))
                except FileNotFoundError:
                    pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 200):
            securefile.write_private(target, f"v{i}" * 1000)
    finally:
        done.set()
        reader.join()
    assert observed
    assert all(m == 0o600 for m, _ in observed), {m for m, _ in observed}
    contents = {text for _, text in observed}
    assert all(len(set(text.split("v")) - {""}) == 1 for text in contents), "a half-written file was read"


def test_create_private_creates_once_and_keeps_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    assert securefile.create_private(target, "first") is True
    assert securefile.create_private(target, "second") is False
    assert target.read_text() == "first" and mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_new_folder_is_owner_only_and_a_world_writable_one_is_refused(tmp_path: Path) -> None:
    securefile.write_private(tmp_path / "state" / "secret", SECRET)
    assert mode(tmp_path / "state") == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InvalidInput, match="writable by everybody"):
        securefile.write_private(shared / "secret", SECRET)
    assert list(shared.iterdir()) == []
    sticky = tmp_path / "sticky"  # like /tmp: nobody can replace another user's file
    sticky.mkdir()
    sticky.chmod(0o1777)
    securefile.write_private(sticky / "secret", SECRET)
    assert mode(sticky / "secret") == 0o600


def secret_files(root: Path) -> list[Path]:
    names = {"admin-token", "database-url", natsauth.SYSTEM_PASSWORD_FILE, "secrets.keys", "agent-state.json",
             "nats.conf", "password", "nats-users.conf"}
    return [p for p in root.rglob("*") if p.name in names or p.suffix in (".pids", ".pending", ".env")]


def assert_private(root: Path, expected: int) -> None:
    found = secret_files(root)
    assert len(found) == expected, found
    for path in found:
        assert mode(path) == 0o600, f"{path} is {mode(path):o}"
        assert not path.parent.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path.parent} is writable by others"
    leftovers = [p for p in root.rglob("*.tmp")]
    assert leftovers == []


def test_every_writer_of_a_secret_file_in_the_state_folder_writes_it_0600(tmp_path: Path, created_modes: list) -> None:
    old = os.umask(0o000)  # the worst umask: only the writers' own care keeps files private
    try:
        state = tmp_path / "state"
        write_admin_secret(state, "cvy_tok-1_" + SECRET)
        localstate.write_database_url(state, f"postgresql://convoy:{SECRET}@127.0.0.1:5432/postgres")
        natsauth.system_password(state)
        FileKeyring(path=state / "secrets.keys").seal("db", SECRET)
        StateFile.in_folder(state / "agents", "prod").save(
            intents.Applied.empty(), resources_pb2.Runtime(name="prod")
        )
        StateStore(state / "local").save_pids(WorkloadKey("default", "shop", "web"), [])
        instances_command.write_env_file(
            state / "instances" / "shop.env", "shop", f"postgresql://convoy_shop:{SECRET}@db/convoy", SECRET
        )
    finally:
        os.umask(old)
    assert_private(tmp_path, 7)
    assert len(created_modes) >= 7 and all(m == 0o600 for _, m in created_modes)
