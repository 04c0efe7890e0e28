"""Durations, enum names and the small text helpers the loader's messages use."""

from __future__ import annotations

import difflib
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf.descriptor import EnumDescriptor


# ---------------------------------------------------------------------------------------
# Durations and enums


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NANOS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_MAX_DURATION_NANOS = 315_576_000_000 * 10**9  # the protobuf Duration range


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go-style duration ("300ms", "30s", "5m", "1h30m", "1.5h")."""
    bad = f'{text!r} is not a duration such as "30s", "5m" or "1h30m"'
    stripped = text.strip()
    if stripped == "0":
        return 0
    if stripped.startswith("-"):
        raise ValueError(f"{text!r}: must not be negative")
    pos, total = 0, Decimal(0)
    while pos < len(stripped):
        part = _DURATION_PART.match(stripped, pos)
        if part is None:
            raise ValueError(bad)
        try:
            total += Decimal(part.group(1)) * _UNIT_NANOS[part.group(2)]
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise ValueError(bad) from None
        pos = part.end()
    if pos == 0:
        raise ValueError(bad)
    if total != total.to_integral_value():
        raise ValueError(f"{text!r} is finer than a nanosecond")
    if total > _MAX_DURATION_NANOS:
        raise ValueError(f"{text!r} is longer than 10,000 years")
    return int(total)


def format_duration(nanos: int) -> str:
    """The shortest friendly spelling `parse_duration` reads back to `nanos`."""
    if nanos < 0:
        return "-" + format_duration(-nanos)  # never produced by load; shown as stored
    if nanos == 0:
        return "0s"
    if nanos < 10**9:
        for unit, size in (("ms", 10**6), ("us", 10**3)):
            if nanos % size == 0:
                return f"{nanos // size}{unit}"
        return f"{nanos}ns"
    hours, rest = divmod(nanos, _UNIT_NANOS["h"])
    minutes, rest = divmod(rest, _UNIT_NANOS["m"])
    seconds, fraction = divmod(rest, 10**9)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if seconds or fraction:
        text += f"{seconds}" + (f".{fraction:09d}".rstrip("0") if fraction else "") + "s"
    return text


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_short(enum: EnumDescriptor, name: str) -> str:
    prefix = _enum_prefix(enum)
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def enum_choices(enum: EnumDescriptor) -> dict[str, str]:
    """Friendly name -> value name, without the UNSPECIFIED zero value."""
    return {enum_short(enum, v.name): v.name for v in enum.values if v.number != 0}


def enum_value_name(enum: EnumDescriptor, text: str) -> str | None:
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text.strip())
    normal = re.sub(r"[-\s]+", "_", words).upper()
    names = set(enum_choices(enum).values())
    for candidate in (normal, _enum_prefix(enum) + normal):
        if candidate in names:
            return candidate
    return None


# ---------------------------------------------------------------------------------------
# Wording


def unknown_choice(noun: str, given: Any, valid: list[str], *, listing: str = "") -> str:
    """'unknown field "x"; did you mean "y"?', listing the valid names when asked to or
    when none is close."""
    text = f"unknown {noun} {str(given)!r}"
    close = difflib.get_close_matches(str(given), valid, n=1, cutoff=0.6)
    if close:
        text += f"; did you mean {close[0]!r}?"
    if valid and (listing or not close):
        text += f" ({listing or 'valid'}: {', '.join(valid)})"
    return text


def snake(json_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", json_name).lower()


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def key_text(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else repr(text)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool))


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
