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


FILTER_SETTING = "SF_SOQL_FILTER"
# words that end or replace a WHERE condition, or open a sub-query; quoted strings are skipped before the check
_NOT_IN_A_CONDITION = ("select", "from", "where", "limit", "offset", "order", "group", "having", "with", "for",
                       "all", "using", "typeof", "update")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_filter(text: str | None) -> str | None:
    """``SF_SOQL_FILTER`` as one WHERE condition (None when empty), or ``ConfigError`` naming the setting.

    Local checks only, before anything is sent: the text is put inside ``... AND (<filter>)`` of our own queries, so
    what would end the condition or change the query (``;``, a clause keyword such as LIMIT, ORDER BY or GROUP BY, a
    sub-query, an Apex bind ``:name``, double quotes, an unbalanced quote or parenthesis) is refused here. Whether the
    fields exist and the condition parses is Salesforce's answer (``SELECT Id FROM Contact WHERE (<filter>) LIMIT 1``,
    checked by the adapter before its first read; docs/reference/salesforce.md §2.10)."""
    from sync.config import ConfigError

    value = (text or "").strip()
    if not value:
        return None

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"invalid app settings:\n  - {FILTER_SETTING}: {why}")

    outside: list[str] = []  # the text with every quoted string replaced by a blank
    depth, i = 0, 0
    while i < len(value):
        c = value[i]
        if c == "'":
            j = i + 1
            while j < len(value) and value[j] != "'":
                j += 2 if value[j] == "\\" else 1
            if j >= len(value):
                raise refuse("a quote (') is not closed")
            outside.append(" ")
            i = j + 1
            continue
        if c == '"':
            raise refuse("SOQL strings take single quotes ('Customer'), not double quotes")
        if c == ";":
            raise refuse("';' is not allowed: give one WHERE condition, e.g. RecordType.Name = 'Customer'")
        if c == ":":
            raise refuse("':' (an Apex bind variable) is not allowed: write the value itself")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise refuse("a ')' has no matching '('")
        outside.append(c)
        i += 1
    if depth:
        raise refuse("a '(' is not closed")
    for word in _WORD.findall("".join(outside)):
        if word.casefold() in _NOT_IN_A_CONDITION:
            raise refuse(f"'{word}' is not allowed: give one WHERE condition without WHERE, LIMIT, ORDER BY, "
                         "GROUP BY or a sub-query (use a relationship field such as Account.Type instead)")
    return value
