"""A root `convoy up` gives the PostgreSQL server user what it needs and nobody else
anything: the home folder above the state folder and the PostgreSQL install keep their
permissions for every other user (eventstore.access; the server user gets ACL entries)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import asyncpg

from eventstore import access
from eventstore.embedded import POSTGRES_SYSTEM_USER, PostgresServer, postgres_bin_dir


def others_bits(root: Path) -> dict[str, int]:
    modes = {str(root): root.lstat().st_mode & 0o7007}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(folder) / name
            modes[str(p)] = p.lstat().st_mode & 0o7007
    return modes


async def test_root_start_leaves_home_and_install_closed_to_others(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)  # like /root
    install = postgres_bin_dir().parent
    install_before = others_bits(install)
    server = PostgresServer(data_dir=home / "state" / "postgres")
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.stop()
    info = home.stat()
    assert stat.S_IMODE(info.st_mode) & 0o077 in (0, 0o010), f"home is {stat.S_IMODE(info.st_mode):o}"
    assert others_bits(install) == install_before, "the install's permissions for others changed"
    assert not any(mode & stat.S_IWOTH for mode in others_bits(install).values())
    if os.geteuid() != 0:
        assert stat.S_IMODE(info.st_mode) == 0o700  # nothing to grant: the server runs as us
        return
    uid = pwd.getpwnam(POSTGRES_SYSTEM_USER).pw_uid
    entries = access.decode(os.getxattr(home, access.XATTR))
    by_tag = {(e.tag, e.id): e.perm for e in entries}
    assert by_tag[(access.USER_OBJ, access.UNDEFINED_ID)] == 7
    assert by_tag[(access.GROUP_OBJ, access.UNDEFINED_ID)] == 0  # the group gains nothing (the mask is not a grant)
    assert by_tag[(access.OTHER, access.UNDEFINED_ID)] == 0
    assert [(e.id, e.perm) for e in entries if e.tag == access.USER] == [(uid, access.X)]  # search only, one user
