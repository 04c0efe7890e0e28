"""The keyring: AES-256-GCM under keys outside the log, rotation, retirement, and clear
errors for a wrong key, a retired key, a damaged file — never naming a value."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from services.secrets.keyring import FileKeyring, KeyringError, Sealed


def test_a_new_keyring_file_is_created_0600_on_first_use_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secrets.keys"
    ring = FileKeyring(path=path)
    assert not path.exists()
    sealed = ring.seal("db", "hunter2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"hunter2" not in sealed.ciphertext and b"hunter2" not in path.read_bytes()
    assert FileKeyring(path=path).open("db", sealed) == "hunter2"  # read back by another process


def test_the_name_is_bound_to_the_ciphertext(tmp_path: Path) -> None:
    ring = FileKeyring(path=tmp_path / "k")
    sealed = ring.seal("db", "hunter2")
    with pytest.raises(KeyringError, match="secret 'other' does not decrypt with key") as wrong:
        ring.open("other", sealed)
    assert wrong.value.retryable is False
    tampered = Sealed(sealed.key_id, sealed.nonce, sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1]))
    with pytest.raises(KeyringError, match="a wrong key file or a damaged ciphertext"):
        ring.open("db", tampered)


def test_rotation_makes_a_new_key_current_and_old_ciphertext_decrypts_until_retired(tmp_path: Path) -> None:
    ring = FileKeyring(path=tmp_path / "k")
    old = ring.seal("db", "v1")
    first = old.key_id
    second = ring.rotate()
    assert second != first and ring.current_key_id == second and ring.key_ids() == sorted([first, second])
    new = ring.seal("db", "v1")
    assert new.key_id == second
    assert ring.open("db", old) == "v1" and ring.open("db", new) == "v1"
    with pytest.raises(KeyringError, match="is the current key"):
        ring.retire([second])
    ring.retire([first])
    reopened = FileKeyring(path=tmp_path / "k")
    assert reopened.key_ids() == [second]
    with pytest.raises(KeyringError, match=f"encrypted under key '{first}', which is not in the keyring"):
        reopened.open("db", old)
    assert reopened.open("db", new) == "v1"


def test_another_keyring_cannot_open_it(tmp_path: Path) -> None:
    sealed = FileKeyring(path=tmp_path / "a").seal("db", "v")
    other = FileKeyring(path=tmp_path / "b")
    other.seal("x", "y")
    with pytest.raises(KeyringError, match="not in the keyring"):
        other.open("db", sealed)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json", "is not a keyring file"),
        (json.dumps({"current": "k1", "keys": {}}), "is damaged"),
        (json.dumps({"current": "k1", "keys": {"k1": "c2hvcnQ="}}), "is damaged"),
    ],
)
def test_a_damaged_keyring_file_is_a_clear_error(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    with pytest.raises(KeyringError, match=error) as refused:
        FileKeyring(path=path).seal("db", "v")
    assert refused.value.retryable is False


def test_a_rotation_by_another_process_sharing_the_file_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "k"
    mine, theirs = FileKeyring(path=path), FileKeyring(path=path)
    first = mine.current_key_id
    assert theirs.current_key_id == first  # the second one found the file the first created
    second = theirs.rotate()
    assert mine.current_key_id == second and mine.seal("db", "v").key_id == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left behind
