"""Letting one system user reach a path without opening it to everybody else.

PostgreSQL refuses to run as root, so a root `convoy up` runs it as `convoy-postgres`
(eventstore.embedded). That user must traverse every folder above its data folder (the
state folder often sits in /root, mode 0700) and read the PostgreSQL install. Adding the
"others" bits for that — what Convoy once did — opens /root's search bit, and the
install's read bits, to every local user. Instead each path that the server user cannot
already reach gets a POSIX ACL entry for that one user (`user:convoy-postgres:--x` on a
folder above the data folder; `r-x`/`r--` inside the install where pip left it closed),
written as the `system.posix_acl_access` attribute (no `setfacl` needed). Owner, group
and other entries are left as they were; paths the user can already reach are not
touched. The only visible side effect is that `ls -l` shows the ACL mask in the group
digit (0700 becomes 0710 with a `+`): the owning group's own entry is unchanged, so it
gains nothing.

On a filesystem without ACLs (`EOPNOTSUPP`) it falls back to the others bit on just
those paths, and logs each path it changed, so the operator knows (`convoy up` also says
to choose a state folder the server user can reach, e.g. under /var/lib).

The ACL codec and the permission check are pure; `grant` does the I/O.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("convoy.access")

XATTR: Final = "system.posix_acl_access"
VERSION: Final = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID: Final = 0xFFFFFFFF
R, W, X = 4, 2, 1
_ENTRY: Final = struct.Struct("<HHI")
_HEADER: Final = struct.Struct("<I")


@dataclass(frozen=True, slots=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL equal to a mode's permission bits."""
    return [
        Entry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7),
        Entry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
        Entry(OTHER, UNDEFINED_ID, mode & 7),
    ]


def decode(data: bytes) -> list[Entry]:
    (version,) = _HEADER.unpack_from(data)
    if version != VERSION or (len(data) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"not a POSIX ACL (version {version}, {len(data)} bytes)")
    return [Entry(tag, id_, perm) for tag, perm, id_ in _ENTRY.iter_unpack(data[_HEADER.size :])]


def encode(entries: Iterable[Entry]) -> bytes:
    ordered = sorted(entries, key=lambda e: (e.tag, e.id))
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in ordered)


def with_user(entries: list[Entry], uid: int, perm: int) -> list[Entry]:
    """`entries` with user `uid` granted `perm` too (added to what it had), and the mask
    widened just enough for it; every other entry as it was."""
    had = next((e.perm for e in entries if e.tag == USER and e.id == uid), 0)
    kept = [e for e in entries if e.tag != MASK and not (e.tag == USER and e.id == uid)]
    kept.append(Entry(USER, uid, had | perm))
    old_mask = next((e.perm for e in entries if e.tag == MASK), None)
    if old_mask is None:  # a minimal ACL: the group digit was the owning group's own permission
        old_mask = next(e.perm for e in kept if e.tag == GROUP_OBJ)
    mask = old_mask | had | perm
    kept.append(Entry(MASK, UNDEFINED_ID, mask))
    return kept


def allowed(entries: list[Entry], owner: int, group: int, uid: int, gids: frozenset[int]) -> int:
    """The permission user `uid` (in groups `gids`) has under an ACL (POSIX.1e order)."""
    if uid == owner:
        return next(e.perm for e in entries if e.tag == USER_OBJ)
    mask = next((e.perm for e in entries if e.tag == MASK), 7)
    named = next((e.perm for e in entries if e.tag == USER and e.id == uid), None)
    if named is not None:
        return named & mask
    groups = [e.perm for e in entries if (e.tag == GROUP_OBJ and group in gids) or (e.tag == GROUP and e.id in gids)]
    if groups:
        union = 0
        for p in groups:
            union |= p
        return union & mask
    return next(e.perm for e in entries if e.tag == OTHER)


def _entries(path: Path, info: os.stat_result) -> list[Entry]:
    try:
        return decode(os.getxattr(path, XATTR, follow_symlinks=False))
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return from_mode(info.st_mode)
        raise


def grant(path: Path, uid: int, gids: frozenset[int], perm: int) -> str | None:
    """Give user `uid` at least `perm` on `path` if it lacks it: an ACL entry for that
    user alone, or (no ACL support) the others bits. Answers what was changed, or None."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return None
    entries = _entries(path, info)
    missing = perm & ~allowed(entries, info.st_uid, info.st_gid, uid, gids)
    if not missing:
        return None
    try:
        os.setxattr(path, XATTR, encode(with_user(entries, uid, missing)), follow_symlinks=False)
        change = f"{path}: ACL user:{uid}:{_rwx(missing)} added"
    except OSError as error:
        if error.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        others = missing & (R | X)
        os.chmod(path, stat.S_IMODE(info.st_mode) | others, follow_symlinks=False)
        change = f"{path}: no ACL support here, so others got {_rwx(others)}"
        log.warning("widened a path for the PostgreSQL server user (no POSIX ACLs)", path=str(path), added=_rwx(others))
    return change


def grant_reach(target: Path, uid: int, gids: frozenset[int]) -> list[str]:
    """Search permission for `uid` on every folder above `target`."""
    changes = [grant(parent, uid, gids, X) for parent in reversed(target.absolute().parents)]
    return [c for c in changes if c]


def grant_tree_read(root: Path, uid: int, gids: frozenset[int]) -> list[str]:
    """Read (and search/execute where the owner may) for `uid` on everything in `root`."""
    changes = [grant(root, uid, gids, R | X)]
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            changes.append(grant(Path(folder) / name, uid, gids, R | X))
        for name in files:
            p = Path(folder) / name
            owner_x = p.lstat().st_mode & stat.S_IXUSR
            changes.append(grant(p, uid, gids, R | (X if owner_x else 0)))
    return [c for c in changes if c]


def _rwx(perm: int) -> str:
    return "".join(ch if perm & bit else "-" for ch, bit in (("r", R), ("w", W), ("x", X)))
