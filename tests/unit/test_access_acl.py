"""The POSIX ACL codec and permission check of eventstore.access (pure)."""

from __future__ import annotations

from eventstore import access
from eventstore.access import GROUP_OBJ, MASK, OTHER, UNDEFINED_ID, USER, USER_OBJ, Entry, R, X

SERVER = 999


def test_a_grant_adds_one_user_and_leaves_owner_group_and_others() -> None:
    acl = access.with_user(access.from_mode(0o700), SERVER, X)
    assert sorted(acl) == sorted([
        Entry(USER_OBJ, UNDEFINED_ID, 7), Entry(GROUP_OBJ, UNDEFINED_ID, 0), Entry(OTHER, UNDEFINED_ID, 0),
        Entry(USER, SERVER, X), Entry(MASK, UNDEFINED_ID, X),
    ])
    assert access.allowed(acl, owner=0, group=0, uid=SERVER, gids=frozenset({995})) == X
    assert access.allowed(acl, owner=0, group=0, uid=1000, gids=frozenset({0})) == 0  # the owning group: nothing
    assert access.allowed(acl, owner=0, group=0, uid=1000, gids=frozenset({1000})) == 0  # others: nothing


def test_a_grant_merges_into_an_existing_acl_and_round_trips() -> None:
    existing = [*access.from_mode(0o750), Entry(USER, 1000, R | X), Entry(MASK, UNDEFINED_ID, R | X)]
    acl = access.with_user(existing, SERVER, X)
    assert access.decode(access.encode(acl)) == sorted(acl, key=lambda e: (e.tag, e.id))
    assert access.allowed(acl, owner=0, group=0, uid=1000, gids=frozenset()) == R | X
    assert access.allowed(acl, owner=0, group=0, uid=SERVER, gids=frozenset()) == X
    assert access.allowed(acl, owner=0, group=0, uid=5, gids=frozenset({0})) == R | X  # the group as before


def test_others_bits_already_enough_need_no_grant() -> None:
    assert access.allowed(access.from_mode(0o755), owner=0, group=0, uid=SERVER, gids=frozenset()) == R | X
