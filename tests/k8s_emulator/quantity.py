"""Resource quantities as the apiserver parses and stores them.

A quantity ("500m", "1Gi", "0.5") is decoded into a fixed-point `resource.Quantity` and
written back in canonical form, so what a client reads back is not always what it sent:
"1000m" comes back as "1", "0.5" as "500m", "1024Mi" as "1Gi", "1.5Gi" as "1536Mi". A client
that diffs live objects against what it sent must cope with that, so the emulator does it too.

This is a port of k8s.io/apimachinery `pkg/api/resource`: `parseQuantityString` and
`ParseQuantity` (quantity.go; the same scanner, the int64 fast path with its "reuse the
string when already canonical" rule, the inf.Dec path rounding up to 1n and capping BinarySI
at 2^63-1), `CanonicalizeBytes` (BinarySI below 1024 or inexact falls back to DecimalSI),
`AsCanonicalBytes` / `AsCanonicalBase1024Bytes` (amount.go: move factors of 10 into the
exponent, then make it a multiple of 3; or divide out 1024s) and the suffix tables (suffix.go).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_UP, Decimal, localcontext

SPLIT_RE = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
ERR_FORMAT = f"quantities must match the regular expression '{SPLIT_RE}'"
ERR_NUMERIC = "unable to parse numeric part of quantity"
ERR_SUFFIX = "unable to parse quantity's suffix"

_SUFFIX_CHARS = set("eEinumkKMGTP")
_DECIMAL = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_BY_EXP = {v: k for k, v in _DECIMAL.items()}
_BINARY_BY_EXP = {v: k for k, v in _BINARY.items()}
_MAX_INT64 = 2**63 - 1
_NANO = -9


class QuantityError(ValueError):
    """The text is not a quantity (the message is the apiserver's)."""


@dataclass(frozen=True)
class Quantity:
    value: Decimal
    format: str  # "DecimalSI" | "BinarySI" | "DecimalExponent"
    text: str = ""
    """The original text when the fast path found it canonical already (ParseQuantity's `s`)."""

    def __str__(self) -> str:
        return self.text or _canonical(self)

    def sign(self) -> int:
        return (self.value > 0) - (self.value < 0)


def _scan(text: str) -> tuple[bool, str, str, str, str]:
    """parseQuantityString: (positive, value, num, denom, suffix)."""
    positive, pos, end = True, 0, len(text)
    if pos < end and text[0] in "+-":
        positive = text[0] == "+"
        pos += 1
    while True:  # strip leading zeros
        if pos >= end:
            return positive, "0", "0", "", ""
        if text[pos] != "0":
            break
        pos += 1
    start = pos
    while pos < end and text[pos].isdigit():
        pos += 1
    num = text[start:pos] or "0"
    if pos >= end:
        return positive, text, num, "", ""
    denom = ""
    if text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos].isdigit():
            pos += 1
        denom = text[start:pos]
        if pos >= end:
            return positive, text, num, denom, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos].isdigit():
        pos += 1
    if pos < end:
        raise QuantityError(ERR_FORMAT)
    return positive, value, num, denom, text[suffix_start:]


def _interpret(suffix: str) -> tuple[int, int, str]:
    if suffix in _DECIMAL:
        return 10, _DECIMAL[suffix], "DecimalSI"
    if suffix in _BINARY:
        return 2, _BINARY[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE":
        try:
            return 10, int(suffix[1:]), "DecimalExponent"
        except ValueError:
            pass
    raise QuantityError(ERR_SUFFIX)


def parse(text: str) -> Quantity:
    """ParseQuantity."""
    if not isinstance(text, str) or not text:
        raise QuantityError(ERR_FORMAT)
    if text == "0":
        return Quantity(Decimal(0), "DecimalSI", "0")
    positive, value, num, denom, suffix = _scan(text)
    base, exponent, fmt = _interpret(suffix)
    scale, mantissa = 0, 1
    if fmt in ("DecimalExponent", "DecimalSI"):
        scale = exponent
        precision = 18 - (len(num) + len(denom))
    elif exponent >= 0 and not denom:
        mantissa = 1 << exponent
        precision = 15 - len(num) - int(exponent * 3 / 10) - 1
    else:
        precision = -1
    if precision >= 0:
        scale -= len(denom)
        if scale >= _NANO:
            shifted = num + denom
            unscaled = int(shifted)
            result = unscaled * mantissa
            if result <= _MAX_INT64:
                signed = result if positive else -result
                amount = Decimal(signed).scaleb(scale)
                canonical = (
                    exponent % 10 == 0 and unscaled & 0x07 != 0 if fmt == "BinarySI"
                    else scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
                )
                return Quantity(amount, fmt, text if canonical else "")
    with localcontext() as ctx:
        ctx.prec = 200
        try:
            amount = Decimal(value)
        except ArithmeticError:
            raise QuantityError(ERR_NUMERIC) from None
        amount = amount.scaleb(exponent) if base == 10 else amount * (Decimal(2) ** exponent)
        negative = amount < 0
        amount = abs(amount)
        if amount != 0:
            amount = amount.quantize(Decimal("1e-9"), rounding=ROUND_UP)
        if fmt == "BinarySI" and amount > _MAX_INT64:
            amount = Decimal(_MAX_INT64)
        if fmt == "BinarySI" and 0 < amount < 1:
            fmt = "DecimalSI"
        return Quantity(-amount if negative else amount, fmt)


def _decimal_parts(amount: Decimal) -> tuple[int, int]:
    """AsCanonicalBytes: (mantissa, exponent) with the exponent a multiple of 3."""
    sign, digits, exp = amount.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0")
    exponent = int(exp)
    while mantissa and mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    while exponent % 3:
        mantissa *= 10
        exponent -= 1
    return (-mantissa if sign else mantissa), exponent


def _canonical(q: Quantity) -> str:
    """CanonicalizeBytes."""
    if q.value == 0:
        return "0"
    fmt = q.format
    rounded = q.value
    if fmt == "BinarySI":
        if -1024 < q.value < 1024:
            fmt = "DecimalSI"
        else:
            with localcontext() as ctx:
                ctx.prec = 200
                rounded = q.value.quantize(Decimal(1), rounding=ROUND_UP)
            if rounded != q.value:
                fmt = "DecimalSI"
    if fmt in ("DecimalSI", "DecimalExponent"):
        mantissa, exponent = _decimal_parts(q.value)
        if fmt == "DecimalSI":
            suffix = _DECIMAL_BY_EXP.get(exponent, "")
        else:
            suffix = f"e{exponent}" if exponent else ""
        return f"{mantissa}{suffix}"
    number, power = int(rounded), 0
    while abs(number) >= 1024 and number % 1024 == 0:
        number //= 1024
        power += 1
    return f"{number}{_BINARY_BY_EXP.get(power * 10, '')}"


def canonical(text: str) -> str:
    """The quantity as the apiserver stores it (raises QuantityError for what it cannot parse)."""
    return str(parse(text))
