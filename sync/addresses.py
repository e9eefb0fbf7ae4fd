"""Outlook's free-text country and state as ISO codes, for orgs with State and Country/Territory Picklists.

Outlook stores whatever the user typed ("USA", "Deutschland", "Calif."); such an org accepts only its codes or
integration values (docs/reference/salesforce.md §1.4). ``country_code`` reads ISO 3166-1 codes (alpha-2, alpha-3),
English, official and common names and their translations in the languages of ``LANGUAGES`` from pycountry (ISO's own
data, with the iso-codes project's translations); ``state_code`` reads ISO 3166-2 codes and names of the org's states,
and an abbreviation that is the start of exactly one name ("Calif."). pycountry is imported on first use.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from functools import cache

# Translations searched for country names (the languages of most Outlook users; English comes first and wins a tie)
LANGUAGES = ("de", "fr", "es", "it", "pt", "pt_BR", "nl", "sv", "da", "nb", "fi", "pl", "cs", "hu", "ro", "tr", "ru",
             "uk", "el", "ja", "zh_CN", "zh_TW", "ko")
# ISO 3166-1 reserves "UK" for the United Kingdom at its request (exceptionally reserved code); people write it.
_RESERVED = {"uk": "GB"}
_MIN_PREFIX = 3  # an abbreviation shorter than this is taken as a code only


def _key(text: str) -> str:
    """Case, accents, dots and spacing ignored: "U.S.A." -> "usa", "Tôkyô" -> "tokyo"."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(plain.replace(".", "").replace(",", " ").casefold().split())


@cache
def _country_index() -> dict[str, str]:
    import gettext

    import pycountry

    index: dict[str, str] = {}
    names: list[tuple[str, str]] = []
    for c in pycountry.countries:
        names += [(c.alpha_2, c.alpha_2), (c.alpha_3, c.alpha_2)]
        names += [(getattr(c, attr), c.alpha_2) for attr in ("name", "official_name", "common_name")
                  if getattr(c, attr, None)]
    for lang in LANGUAGES:
        try:
            tr = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[lang])
        except OSError:
            continue
        names += [(tr.gettext(c.name), c.alpha_2) for c in pycountry.countries]
    for name, code in names:
        index.setdefault(_key(name), code)
    for alias, code in _RESERVED.items():
        index.setdefault(alias, code)
    return index


def country_code(text: str | None, labels: Mapping[str, str] | None = None) -> str | None:
    """The ISO 3166-1 alpha-2 code ``text`` names, or None. ``labels``: the org's code -> integration value (an
    admin may have changed one, e.g. to "USA"), checked first."""
    if not text or not text.strip():
        return None
    key = _key(text)
    for code, label in (labels or {}).items():
        if key in (_key(label), code.casefold()):
            return code
    return _country_index().get(key)


@cache
def _iso_states(country: str) -> dict[str, str]:
    import pycountry

    found = pycountry.subdivisions.get(country_code=country)  # type: ignore[no-untyped-call]
    return {s.code.split("-", 1)[1]: s.name for s in found or []}


def state_code(country: str, text: str | None, labels: Mapping[str, str] | None = None) -> str | None:
    """The code of the state of ``country`` that ``text`` names (a code, a name, or the unique start of a name), or
    None. ``labels``: the org's state code -> integration value for that country; without it, ISO 3166-2's."""
    if not text or not text.strip():
        return None
    key = _key(text)
    known = dict(labels) if labels is not None else _iso_states(country)
    iso = _iso_states(country)
    names = [(code, _key(name)) for code, label in known.items() for name in (label, iso.get(code) or label)]
    for code, name in names:
        if key in (name, code.casefold()):
            return code
    starts = {code for code, name in names if len(key) >= _MIN_PREFIX and name.startswith(key)}
    return starts.pop() if len(starts) == 1 else None
