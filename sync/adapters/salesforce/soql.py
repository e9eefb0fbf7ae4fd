"""SOQL literals and the datetimes Salesforce writes (``2024-05-01T10:00:00.000+0000``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime


def soql_quote(value: str) -> str:
    """A SOQL string literal (backslash and quote escaped; SOQL reference 'Quoted String Escape Sequences')."""
    escaped = (value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f"'{escaped}'"


def soql_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_dt(text: str | None) -> datetime | None:
    if not text:
        return None
    t = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    return datetime.fromisoformat(t)
