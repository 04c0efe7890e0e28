"""Files that hold a secret: owner-only from the first byte, replaced atomically.

A secret file (an admin token, a database URL with its password, a NATS config with
password hashes, a keyring, an agent's state with its environment) must never exist,
even for a moment, with wider permissions than 0600 — `write_text` then `chmod` leaves
a window in which another user can open it and keep the descriptor. So every writer
goes through `write_private`: a fresh temporary file beside the target, created by
`os.open(O_CREAT | O_EXCL, 0o600)` (a name nobody else holds, the mode set by the
kernel at creation; `fchmod` covers a umask that would narrow nothing but is applied
anyway), written, fsynced, renamed over the target, and the folder fsynced so the rename
survives a crash. A reader therefore sees the old file or the new one, both 0600.

`ensure_private_dir` makes (or checks) the folder such a file goes in: new folders are
0700; an existing one that everybody may write to without the sticky bit (which would let
anybody swap the file for one of their own) is refused with a clear error. A group-
writable folder is accepted (umask 002 setups), since the group could rename but never
read a 0600 file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from eventstore.errors import InvalidInput

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

_created_hook: Callable[[Path], None] | None = None
"""Tests only: called with the temporary file's path right after it is created, before
any byte of the secret is written (to check its mode at that moment)."""


def ensure_private_dir(path: Path, *, mode: int = DIR_MODE) -> Path:
    """Create `path` (and its missing parents) with `mode`; refuse an existing folder
    anybody may write to without the sticky bit (they could replace a secret file in it).
    Answers `path`."""
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a racing writer made it
                folder.mkdir(mode=mode)
        info = path.stat()
    except OSError as error:
        raise InvalidInput(f"cannot create the folder {path} for secret files: {error.strerror or error}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{path} is not a folder; secret files need one")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise InvalidInput(
            f"the folder {path} is writable by everybody (mode {stat.S_IMODE(info.st_mode):o}), so anybody could "
            f"replace a secret file in it: `chmod o-w {path}` or choose another folder"
        )
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    """Replace `path` atomically with `data`, mode 0600 from creation (see the module
    docstring). The folder is created 0700 if missing and refused if anybody may write
    to it. Answers `path`."""
    temporary = _temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def create_private(path: Path, data: bytes | str) -> bool:
    """Like `write_private`, but only if `path` does not exist yet: True when this call
    created it, False when one was already there (left as it is). Two racing callers
    never both win, and neither sees a half-written file."""
    temporary = _temporary(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    _fsync_dir(path.parent)
    return True


def _temporary(path: Path, data: bytes | str) -> Path:
    """A new 0600 file beside `path` holding `data`, fsynced."""
    content = data.encode("utf-8") if isinstance(data, str) else data
    folder = ensure_private_dir(path.parent)
    temporary = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            if _created_hook is not None:
                _created_hook(temporary)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return temporary


def is_private(path: Path) -> bool:
    """Whether `path` is a regular file only its owner may read or write."""
    info = path.lstat()
    return stat.S_ISREG(info.st_mode) and not info.st_mode & 0o077


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
