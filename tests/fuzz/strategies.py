"""Hypothesis strategies for hostile HTTP input: structured-but-wrong JSON, raw bytes, headers, query strings, and
personal-looking values to embed in them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.fuzz.support import Person

FIRST_NAMES = ("Marisol", "Øyvind", "Siobhán", "Zoë", "Bartholomew", "Ngozi", "Kazimierz", "Thandiwe", "Анастасия",
               "محمد", "Yosef", "Leocadia", "Dagmara", "Rhiannon", "Oluwaseun")
LAST_NAMES = ("Featherstonehaugh", "Wojciechowski", "Okonkwo-Bright", "Nakashima", "Van der Westhuizen",
              "Dąbrowska", "Iglesias", "Ó Súilleabháin", "Abernethy", "Kowalczyk", "Fairweather", "الحسيني",
              "Pennington", "Grünewald", "Castellanos")


@st.composite
def people(draw: st.DrawFn) -> Person:
    first, last = draw(st.sampled_from(FIRST_NAMES)), draw(st.sampled_from(LAST_NAMES))
    n = draw(st.integers(1000, 9999))
    local = draw(st.from_regex(r"[a-z]{3,8}", fullmatch=True))
    email = f"{local}.q{n}@{draw(st.sampled_from(['privatemail', 'homebox', 'familia']))}.example"
    phone = f"+44 7700 {n} {draw(st.integers(100, 999))}"
    return Person(first, last, email, phone)


# --- text and JSON ------------------------------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "\udfff", "\u202e\u202dRTL override", "<script>alert(1)</script>", "' OR 1=1 --",
    "%00%2F..%2F", "../../etc/passwd", "\r\nX-Injected: 1", "🧑🏽‍💻👩‍👩‍👧‍👦", "עברית ومرحبا", "null", "NaN", "1e999",
    "\\u0000", "{}", "[]", "\ufeff", "Ｆｕｌｌｗｉｄｔｈ", "a" * 300,
])
TEXT = st.one_of(st.text(max_size=30), HOSTILE_TEXT)
# Header values, query parameters and route values reach a function through the host's gRPC channel (UTF-8 strings):
# they can hold anything but lone surrogates, which only JSON escapes in a body can produce.
HOST_TEXT = TEXT.map(lambda t: t.encode("utf-8", "replace").decode("utf-8"))
HUGE_TEXT = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "😀", "\u200b"]), st.integers(1000, 70_000))

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True), TEXT,
)
JUNK: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(TEXT, children, max_size=4),
    ),
    max_leaves=10,
)


def encode(doc: Any, how: str) -> bytes:
    """A JSON document as request bytes, in one of several encodings (some of them not what a client should send)."""
    if how == "ascii":
        return json.dumps(doc, allow_nan=True).encode()
    if how == "utf-8":
        return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    if how == "utf-16":
        return json.dumps(doc, allow_nan=True).encode("utf-16")
    if how == "bom":
        return b"\xef\xbb\xbf" + json.dumps(doc).encode()
    if how == "trailing":
        return json.dumps(doc).encode() + b" garbage"
    if how == "truncated":
        raw = json.dumps(doc).encode()
        return raw[: max(len(raw) // 2, 1)]
    if how == "dupkey":  # the first key of an object twice, the real value last (Python's decoder would keep it)
        raw = json.dumps(doc)
        if isinstance(doc, dict) and doc:
            return ("{" + json.dumps(next(iter(doc))) + ": null, " + raw[1:]).encode()
        return raw.encode()
    raise ValueError(how)


ENCODINGS = st.sampled_from(["ascii", "ascii", "ascii", "utf-8", "utf-8", "utf-16", "bom", "trailing", "truncated",
                             "dupkey"])


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\xff\xfe\xfd", b"\x80abc", b"{", b"[", b"null", b"true", b"0", b'"value"', b"{}", b"[]",
                     b'{"value": null}', b'{"value": {}}', b"\x00" * 64, b'{"value": [' + b"1," * 1000 + b"1]}"]),
    st.integers(1000, 200_000).map(nested),
    st.integers(1000, 200_000).map(lambda d: b'{"value": ' + nested(d) + b"}"),
    st.integers(1000, 100_000).map(lambda d: ('{"a":' * d + "1" + "}" * d).encode()),
)
OVERSIZE_BODY = st.integers(1, 2048).map(lambda extra: b'{"value": [' + b" " * (1024 * 1024 + extra) + b"]}")

# --- headers and query strings ---------------------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=utf-16", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/xml", "*/*",
    "application/json;;;", "\u00e9/\u00e9",
])
HEADER_NAMES = st.sampled_from(["content-type", "Content-Type", "accept", "user-agent", "x-forwarded-for",
                                "x-ms-client-principal", "authorization", "x-functions-key", "cookie", "x-sync-foo"])


@st.composite
def headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    if draw(st.booleans()):
        out["Content-Type"] = draw(CONTENT_TYPES)
    length = draw(st.sampled_from(["none", "right", "right", "wrong", "junk", "none", "huge"]))
    if length == "right":
        out["Content-Length"] = str(len(body))
    elif length == "wrong":
        out["Content-Length"] = str(draw(st.integers(0, 5000)))
    elif length == "huge":
        out["Content-Length"] = draw(st.sampled_from(["99999999999", "1048577", str(2**64)]))
    elif length == "junk":
        out["Content-Length"] = draw(st.sampled_from(["-1", "abc", "", " 12", "1e3", "١٢٣"]))
    for name, value in draw(st.dictionaries(HEADER_NAMES, HOST_TEXT, max_size=3)).items():
        out.setdefault(name, value)
    return out


@st.composite
def queries(draw: st.DrawFn, *, token: bool = True) -> tuple[str, dict[str, str]]:
    """(query string as sent, params as the host would pass them). ``validationToken`` sometimes, in odd shapes."""
    pairs: list[tuple[str, str]] = []
    if token and draw(st.sampled_from([False, False, False, False, True])):
        pairs.append(("validationToken", draw(st.one_of(HOST_TEXT, HUGE_TEXT, st.just("Validation: a+b&c=<x>")))))
    pairs += draw(st.lists(st.tuples(st.sampled_from(["code", "x", "validationtoken", "", "a b", "ü"]), HOST_TEXT),
                           max_size=3))
    style = draw(st.sampled_from(["params+query", "query-only", "params-only"]))
    qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    params = {} if style == "query-only" else dict(pairs)
    return ("" if style == "params-only" else qs), params
