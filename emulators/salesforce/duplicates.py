"""The standard Contact matching rule, as the standard Contact duplicate rule applies it on API saves.

Matching equation (docs/reference/salesforce.md §1.3): (First AND Last AND Title AND Account) OR (First AND Last AND
Email) OR (First AND Last AND Phone AND Account) OR (First AND Last AND Street AND (City OR Zip OR Phone)) OR (First AND
Last AND Street AND Title) OR (First AND Last AND Title AND Email) OR (First AND Last AND Phone). Blank fields never
match, except a blank first name in a group with Email. First and last names are also tried transposed.

Fuzzy methods are approximations (docs/emulator-fidelity-salesforce.md): first name = exact, initial, or Jaro-Winkler
>= 0.85; last name = exact or Jaro-Winkler >= 0.90; account name = exact after dropping punctuation and legal suffixes
(Inc, Ltd, ...) or Jaro-Winkler >= 0.90; city = exact or Jaro-Winkler >= 0.85; email, phone digits, street, zip and
title exact after normalising case and spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

_SUFFIXES = {"inc", "incorporated", "corp", "corporation", "co", "company", "ltd", "limited", "llc", "plc", "gmbh",
             "ag", "sa", "sarl", "bv", "nv", "pty", "srl", "spa", "ab", "oy", "as"}


def _norm(value: Any) -> str:
    text = unicodedata.normalize("NFKD", str(value or "")).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^\w\s@.]", " ", text.casefold()).split())


def jaro_winkler(a: str, b: str) -> float:
    if a == b:
        return 1.0 if a else 0.0
    if not a or not b:
        return 0.0
    reach = max(max(len(a), len(b)) // 2 - 1, 0)
    used = [False] * len(b)
    matched_a = []
    for i, ch in enumerate(a):
        for j in range(max(0, i - reach), min(len(b), i + reach + 1)):
            if not used[j] and b[j] == ch:
                used[j] = True
                matched_a.append(ch)
                break
    if not matched_a:
        return 0.0
    matched_b = [b[j] for j in range(len(b)) if used[j]]
    m = len(matched_a)
    transpositions = sum(x != y for x, y in zip(matched_a, matched_b, strict=True)) / 2
    jaro = (m / len(a) + m / len(b) + (m - transpositions) / m) / 3
    prefix = 0
    for x, y in zip(a[:4], b[:4], strict=False):
        if x != y:
            break
        prefix += 1
    return jaro + prefix * 0.1 * (1 - jaro)


def _first(a: str, b: str) -> bool:
    a, b = a.replace(".", "").strip(), b.replace(".", "").strip()  # "A." is an initial
    if not a or not b:
        return False
    return a == b or (min(len(a), len(b)) == 1 and a[0] == b[0]) or jaro_winkler(a, b) >= 0.85


def _last(a: str, b: str) -> bool:
    return bool(a and b) and (a == b or jaro_winkler(a, b) >= 0.90)


def _company(a: str, b: str) -> bool:
    a, b = (" ".join(w for w in x.replace(".", " ").split() if w not in _SUFFIXES) for x in (a, b))
    return bool(a and b) and (a == b or jaro_winkler(a, b) >= 0.90)


def _same(a: str, b: str) -> bool:
    return bool(a and b) and a == b


def _digits(value: Any) -> str:
    d = re.sub(r"\D", "", str(value or ""))
    return d[1:] if len(d) == 11 and d.startswith("1") else d


def is_duplicate(new: dict[str, Any], old: dict[str, Any], account_name: Callable[[Any], str | None]) -> bool:
    """Whether the standard Contact matching rule matches ``new`` against ``old``."""
    email = _same(_norm(new.get("Email")), _norm(old.get("Email")))
    phone = _same(_digits(new.get("Phone")), _digits(old.get("Phone")))
    title = _same(_norm(new.get("Title")), _norm(old.get("Title")))
    account = _company(_norm(account_name(new.get("AccountId"))), _norm(account_name(old.get("AccountId"))))
    street = _same(_norm(new.get("MailingStreet")), _norm(old.get("MailingStreet")))
    city = bool(new.get("MailingCity") and old.get("MailingCity")) and (
        jaro_winkler(_norm(new.get("MailingCity")), _norm(old.get("MailingCity"))) >= 0.85)
    zip_ = _same(_norm(new.get("MailingPostalCode")), _norm(old.get("MailingPostalCode")))
    for first_a, last_a in ((new.get("FirstName"), new.get("LastName")), (new.get("LastName"), new.get("FirstName"))):
        fa, fb, la, lb = _norm(first_a), _norm(old.get("FirstName")), _norm(last_a), _norm(old.get("LastName"))
        if not _last(la, lb):
            continue
        first = _first(fa, fb)
        if (email and (first or not fa or not fb)) or (first and (
                (title and account) or (phone and account) or (street and (city or zip_ or phone))
                or (street and title) or (title and email) or phone)):
            return True
    return False


@lru_cache(maxsize=200_000)
def _keys(email: Any, phone: Any, title: Any, street: Any) -> frozenset[tuple[str, str]]:
    """Every group of the equation needs one of these to be equal, so a record sharing none is no candidate (the
    match keys of docs/reference/salesforce.md §1.3 play this part in Salesforce)."""
    keys = {("e", _norm(email)), ("p", _digits(phone)), ("t", _norm(title)), ("s", _norm(street))}
    return frozenset(k for k in keys if k[1])


def _keys_of(r: dict[str, Any]) -> frozenset[tuple[str, str]]:
    return _keys(r.get("Email"), r.get("Phone"), r.get("Title"), r.get("MailingStreet"))


def duplicates_of(new: dict[str, Any], others: Iterable[dict[str, Any]],
                  account_name: Callable[[Any], str | None]) -> list[dict[str, Any]]:
    """The live records the rule matches."""
    keys = _keys_of(new)
    if not keys:
        return []
    return [r for r in others if not r.get("IsDeleted") and r.get("Id") != new.get("Id") and keys & _keys_of(r)
            and is_duplicate(new, r, account_name)]
