"""Pagination for list methods: page sizes and opaque, tamper-evident page tokens.

A page token records the key of the last item answered (not an offset), so items added
or removed between pages neither repeat nor vanish from the rest of the walk, and the
listing it belongs to, so a token from one listing cannot be replayed on another. It is
base64url JSON — opaque to clients by contract, not by secrecy: nothing in it is
private, and a forged token can only skip ahead in a listing the caller may read anyway.
Any token that does not decode is a 400, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from schemas.convoy.v1 import api_pb2
from services.api.errors import invalid

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
MAX_TOKEN_LENGTH: Final = 4096

T = TypeVar("T")
Key = tuple[str | int, ...]


def page_size(page: api_pb2.PageRequest, field: str = "page.page_size") -> int:
    if page.page_size < 0:
        raise invalid(field, "must not be negative (0 = the default, 100)")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(listing: str, key: Key) -> str:
    raw = json.dumps({"l": listing, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, listing: str, field: str = "page.page_token") -> Key | None:
    """The last key of the previous page, or None for the first page."""
    if not token:
        return None
    problem = "is not a page token from this listing; pass next_page_token from the previous answer unchanged"
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise invalid(field, problem)
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise invalid(field, problem) from None
    if not isinstance(data, dict) or data.get("l") != listing or not isinstance(data.get("k"), list):
        raise invalid(field, problem)
    key = data["k"]
    if not all(isinstance(part, str | int) and not isinstance(part, bool) for part in key):
        raise invalid(field, problem)
    return tuple(key)


def paginate(
    items: Sequence[T], key: Callable[[T], Key], page: api_pb2.PageRequest, listing: str
) -> tuple[list[T], str]:
    """One page of `items` (sorted by `key`, ascending) and the next page's token
    ("" when this is the last page)."""
    size = page_size(page)
    after = decode_token(page.page_token, listing)
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [item for item in ordered if _after(key(item), after)]
    chunk = ordered[:size]
    next_token = encode_token(listing, key(chunk[-1])) if len(ordered) > size else ""
    return chunk, next_token


def _after(key: Key, after: Key) -> bool:
    try:
        return key > after
    except TypeError:  # a forged token mixing ints and strings: treat as "past the end"
        return False
