"""Kubernetes resource quantities ("128Mi", "1G", "0.5") as plain numbers."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def parse(value: str | int) -> Decimal:
    """The quantity's value in base units; ValueError names what is wrong."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number, factor = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = text, 1
    try:
        result = Decimal(number) * Decimal(factor)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a quantity (e.g. 128Mi, 2Gi)") from None
    if result < 0:
        raise ValueError(f"{value!r} is negative")
    return result


def to_bytes(value: str | int) -> int:
    return int(parse(value))

