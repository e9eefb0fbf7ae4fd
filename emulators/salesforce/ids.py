"""Salesforce-shaped ids and timestamps.

Ids: 15-char case-sensitive base id + 3-char case-insensitive suffix = 18 chars; key prefixes 003 Contact, 001 Account,
005 User, 00D Organization (docs/reference/salesforce.md §1.1 "Id"). The suffix algorithm is the published one: for each
5-char block, a 5-bit number whose bit i is set when char i is an upper-case letter, mapped into ``A..Z0..5``
(https://help.salesforce.com/s/articleView?id=000385008 "What are Salesforce IDs composed of?").
Datetimes: REST JSON ``2026-03-01T12:34:56.000+0000`` (docs/reference/salesforce.md §1.1).
"""

from __future__ import annotations

import itertools
import string
import threading
from datetime import UTC, datetime

KEY_PREFIX = {"Contact": "003", "Account": "001", "User": "005", "Organization": "00D"}
PREFIX_TYPE = {v: k for k, v in KEY_PREFIX.items()}
_SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def id_suffix(id15: str) -> str:
    out = []
    for block in range(3):
        chunk = id15[block * 5 : block * 5 + 5]
        n = sum(1 << i for i, c in enumerate(chunk) if c.isupper())
        out.append(_SUFFIX_ALPHABET[n])
    return "".join(out)


def to18(any_id: str) -> str:
    return any_id if len(any_id) == 18 else any_id + id_suffix(any_id)


def looks_like_id(value: object) -> bool:
    return isinstance(value, str) and len(value) in (15, 18) and value.isalnum()


class IdFactory:
    """Monotonic 18-char ids; ``pod`` makes ids of two emulators differ."""

    def __init__(self, pod: str = "Hs") -> None:
        self._pod = pod
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def new(self, sobject: str) -> str:
        with self._lock:
            n = next(self._counter)
        digits = []
        for _ in range(7):
            n, r = divmod(n, 62)
            digits.append(_BASE62[r])
        body = f"{KEY_PREFIX[sobject]}{self._pod}000{''.join(reversed(digits))}"
        return to18(body)


def fmt_datetime(value: datetime) -> str:
    """REST wire format, millisecond precision, ``+0000`` (docs/reference/salesforce.md §1.1)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def parse_datetime(text: str) -> datetime:
    """Accepts SOQL literals (``2026-01-01T00:00:00Z``, ``...+01:00``) and REST values (``...000+0000``)."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if len(t) >= 5 and t[-5] in "+-" and t[-3] != ":":
        t = t[:-2] + ":" + t[-2:]
    value = datetime.fromisoformat(t)
    if value.tzinfo is None:
        raise ValueError("datetime without offset")
    return value.astimezone(UTC)
