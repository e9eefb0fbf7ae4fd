"""The subset of SOQL the sync adapter uses, parsed and evaluated in memory.

Grammar (SOQL and SOSL Reference, https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/):
SELECT field[, field...] FROM Object [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]. Fields may be relationship paths (Account.Name, Owner.Email). Conditions use AND, OR,
NOT, parentheses, = != <> < <= > >=, LIKE, IN (...) and NOT IN (...). Mixing AND and OR needs parentheses
("A AND B OR C" is MALFORMED_QUERY ``unexpected token: 'OR'``), and NOT only opens a condition (the whole WHERE or a
parenthesised one): "A AND NOT B" is ``unexpected token: 'NOT'``; NOT negates the field expression or parenthesised
group after it (docs/reference/salesforce.md §2.10). LIKE takes text fields only. ``=``/``!=`` treat null as a value
(``Email != null``); an absent parent reads as null (``Account.Type = null`` is true without an Account).
Literals are quoted strings, numbers, true/false/null and unquoted datetime literals (2026-03-01T12:34:56Z,
docs/reference/salesforce.md §1.1); dateTime comparisons ignore fractions of a second (§2.2).
String comparisons are case-insensitive, as in SOQL. ORDER BY defaults to ASC NULLS FIRST.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from emulators.salesforce.ids import looks_like_id, parse_datetime, to18
from emulators.salesforce.sobjects import FieldDef, SObjectType


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"select", "from", "where", "and", "or", "not", "in", "like", "order", "by", "asc", "desc", "nulls",
            "first", "last", "limit", "offset", "true", "false", "null", "all", "rows"}


@dataclass
class Query:
    fields: list[str]
    sobject: str
    where: Any = None
    order: list[tuple[str, bool, bool]] = field(default_factory=list)  # path, descending, nulls_last
    limit: int | None = None
    offset: int = 0


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s[1:-1])


def tokenize(text: str) -> list[tuple[str, Any]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{text[pos:pos + 20].strip()}'")
        kind = m.lastgroup or ""
        raw = m.group(kind)
        pos = m.end()
        if kind == "str":
            out.append(("str", _unescape(raw)))
        elif kind == "dt":
            out.append(("dt", parse_datetime(raw)))
        elif kind == "date":
            out.append(("date", date.fromisoformat(raw)))
        elif kind == "num":
            out.append(("num", float(raw) if "." in raw else int(raw)))
        elif kind == "ident" and raw.lower() in KEYWORDS:
            out.append(("kw", raw.lower()))
        else:
            out.append((kind, raw))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, Any]:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else ("eof", None)

    def take(self) -> tuple[str, Any]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, value: Any = None) -> Any:
        k, v = self.take()
        if k != kind or (value is not None and v != value):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{v}'" if v is not None else "unexpected end")
        return v

    def is_kw(self, *words: str) -> bool:
        k, v = self.peek()
        return k == "kw" and v in words

    def query(self) -> Query:
        self.expect("kw", "select")
        fields = [self.expect("ident")]
        while self.peek() == ("punct", ","):
            self.take()
            fields.append(self.expect("ident"))
        self.expect("kw", "from")
        q = Query(fields, self.expect("ident"))
        if self.is_kw("where"):
            self.take()
            q.where = self.condition()
        if self.is_kw("order"):
            self.take()
            self.expect("kw", "by")
            while True:
                path = self.expect("ident")
                desc = False
                if self.is_kw("asc", "desc"):
                    desc = self.take()[1] == "desc"
                nulls_last = desc
                if self.is_kw("nulls"):
                    self.take()
                    nulls_last = self.expect("kw") == "last"
                q.order.append((path, desc, nulls_last))
                if self.peek() != ("punct", ","):
                    break
                self.take()
        if self.is_kw("limit"):
            self.take()
            q.limit = int(self.expect("num"))
        if self.is_kw("offset"):
            self.take()
            q.offset = int(self.expect("num"))
        if self.is_kw("all"):
            # ALL ROWS is Apex-only; REST callers use /queryAll (docs/reference/salesforce.md §2.2). Guess:
            # MALFORMED_QUERY.
            raise SoqlError("MALFORMED_QUERY", "ALL ROWS not allowed in this context")
        if self.peek()[0] != "eof":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.peek()[1]}'")
        return q

    def condition(self) -> Any:
        """A WHERE condition or a parenthesised one: ``[NOT] term`` or ``term (AND term)...`` or
        ``term (OR term)...``; another operator after the run, or NOT after AND/OR, is MALFORMED_QUERY."""
        if self.is_kw("not"):
            self.take()
            first = ("not", self.term())
        else:
            first = self.term()
        if not self.is_kw("and", "or"):
            return first
        op = self.peek()[1]
        parts = [first]
        while self.is_kw(op):
            self.take()
            if self.is_kw("not"):
                raise SoqlError("MALFORMED_QUERY", "unexpected token: 'NOT'")
            parts.append(self.term())
        if self.is_kw("and", "or"):  # the other operator without parentheses
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.peek()[1].upper()}'")
        return (op, parts)

    def term(self) -> Any:
        if self.peek() == ("punct", "("):
            self.take()
            e = self.condition()
            self.expect("punct", ")")
            return e
        return self.comparison()

    def value(self) -> tuple[str, Any]:
        k, v = self.take()
        if k in ("str", "dt", "date", "num"):
            return k, v
        if k == "kw" and v in ("true", "false"):
            return "bool", v == "true"
        if k == "kw" and v == "null":
            return "null", None
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{v}'")

    def comparison(self) -> Any:
        path = self.expect("ident")
        negate = False
        if self.is_kw("not"):
            self.take()
            negate = True
            if not self.is_kw("in"):
                raise SoqlError("MALFORMED_QUERY", "expecting IN after NOT")
        if self.is_kw("in"):
            self.take()
            self.expect("punct", "(")
            values = [self.value()]
            while self.peek() == ("punct", ","):
                self.take()
                values.append(self.value())
            self.expect("punct", ")")
            return ("in", path, values, negate)
        if self.is_kw("like"):
            self.take()
            return ("like", path, self.value())
        op = self.expect("op")
        return ("cmp", path, "!=" if op == "<>" else op, self.value())


def parse(text: str) -> Query:
    if len(text) > 100_000:  # SOQL length limit, docs/reference/salesforce.md §2.2
        raise SoqlError("MALFORMED_QUERY", "Query string is too long")
    return _Parser(tokenize(text)).query()


Resolver = Callable[[dict[str, Any], str], Any]


class Evaluator:
    """Evaluates a parsed query against records of ``types[q.sobject]``; ``resolve(record, path)`` follows
    relationship paths (provided by the store, which owns the related records)."""

    def __init__(self, types: dict[str, SObjectType], resolve: Resolver) -> None:
        self.types = types
        self.resolve = resolve

    def check(self, q: Query) -> SObjectType:
        t = self.types.get(q.sobject) or next(
            (x for n, x in self.types.items() if n.lower() == q.sobject.lower()), None)
        if t is None:
            raise SoqlError("INVALID_TYPE", f"sObject type '{q.sobject}' is not supported.")
        q.sobject = t.name
        q.fields = [self.canonical(t, p) for p in q.fields]
        q.order = [(self.canonical(t, p), d, n) for p, d, n in q.order]
        if q.where is not None:
            self._check_expr(t, q.where)
        return t

    def _walk(self, t: SObjectType, path: str) -> tuple[str, FieldDef]:
        parts = path.split(".")
        out, cur = [], t
        for rel in parts[:-1]:
            ref = cur.relationships.get(rel.lower())
            if ref is None or ref.reference_to not in self.types or ref.relationship_name is None:
                raise SoqlError("INVALID_FIELD", f"Didn't understand relationship '{rel}' in field path. If you "
                                "are attempting to use a custom relationship, be sure to append the '__r' after the "
                                "custom relationship name.")
            out.append(ref.relationship_name)
            cur = self.types[ref.reference_to]
        f = cur.field(parts[-1])
        if f is None:
            raise SoqlError("INVALID_FIELD", f"No such column '{parts[-1]}' on entity '{cur.name}'. If you are "
                            "attempting to use a custom field, be sure to append the '__c' after the custom field "
                            "name. Please reference your WSDL or the describe call for the appropriate names.")
        out.append(f.name)
        return ".".join(out), f

    def field_def(self, t: SObjectType, path: str) -> FieldDef:
        return self._walk(t, path)[1]

    def canonical(self, t: SObjectType, path: str) -> str:
        return self._walk(t, path)[0]

    def _check_expr(self, t: SObjectType, e: Any) -> None:
        kind = e[0]
        if kind in ("and", "or"):
            for p in e[1]:
                self._check_expr(t, p)
            return
        if kind == "not":
            self._check_expr(t, e[1])
            return
        f = self.field_def(t, e[1])
        if kind == "like" and not f.is_text:
            # "The LIKE operator is supported for string fields only" (SOQL reference, Comparison Operators); the
            # error code is a guess (docs/emulator-fidelity-salesforce.md)
            raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", f"invalid operator on field: {f.name}")
        values = e[2] if kind == "in" else [e[3] if kind == "cmp" else e[2]]
        for vk, vv in values:
            if f.type == "datetime" and vk not in ("dt", "null"):
                raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{f.name}' must be of type "
                                "dateTime and should not be enclosed in quotes")
            if f.type in ("id", "reference") and vk == "str" and not looks_like_id(vv):
                raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {vv}")
            if f.type == "boolean" and vk not in ("bool", "null"):
                raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{f.name}' must be of type "
                                "boolean and should not be enclosed in quotes")

    def matches(self, t: SObjectType, rec: dict[str, Any], e: Any) -> bool:
        kind = e[0]
        if kind == "and":
            return all(self.matches(t, rec, p) for p in e[1])
        if kind == "or":
            return any(self.matches(t, rec, p) for p in e[1])
        if kind == "not":
            return not self.matches(t, rec, e[1])
        f = self.field_def(t, e[1])
        actual = _norm(f.type, self.resolve(rec, e[1]))
        if kind == "in":
            hit = any(actual == _norm(f.type, v) for _, v in e[2])
            return hit != e[3]
        if kind == "like":
            if actual is None:
                return False
            pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(e[2][1]).lower())
            return re.fullmatch(pattern, actual, re.S) is not None
        _, _, op, (_, raw) = e
        expected = _norm(f.type, raw)
        if op == "=":
            return actual == expected
        if op == "!=":
            return actual != expected
        if actual is None or expected is None:
            return False
        return {"<": actual < expected, "<=": actual <= expected, ">": actual > expected,
                ">=": actual >= expected}[op]

    def prefilter(self, t: SObjectType, e: Any) -> Callable[[dict[str, Any]], bool] | None:
        """A cheap test every record ``matches(t, rec, e)`` passes (a necessary condition, never sufficient), or None.

        Only a speed-up for an org of tens of thousands of rows (``bench.mailboxes``): ``matches`` still decides each
        record that passes. It covers a top-level (in ``and`` / ``or``) comparison of a plain field: ``=``, ``>``,
        ``>=`` on a datetime (compared at whole seconds, so ``v >= E`` is necessary) and ``=`` on an id (the first 15
        characters, case-insensitive: what ``to18`` keeps)."""
        kind = e[0]
        if kind in ("and", "or"):
            parts = [self.prefilter(t, p) for p in e[1]]
            if kind == "and":
                known = [p for p in parts if p is not None]
                return (lambda rec: all(p(rec) for p in known)) if known else None
            if not parts or any(p is None for p in parts):
                return None
            alts = [p for p in parts if p is not None]
            return lambda rec: any(p(rec) for p in alts)
        if kind in ("not", "in", "like") or "." in e[1]:
            return None
        _, _, op, (_, raw) = e
        f = self.field_def(t, e[1])
        expected = _norm(f.type, raw)
        if expected is None:
            return None
        name = f.name
        if isinstance(expected, datetime) and op in ("=", ">", ">="):
            def after(rec: dict[str, Any]) -> bool:
                v = rec.get(name)
                try:
                    return v is not None and v >= expected
                except TypeError:  # not comparable (naive against aware): let ``matches`` decide
                    return True
            return after
        if f.type in ("id", "reference") and op == "=" and isinstance(expected, str):
            head = expected[:15]
            return lambda rec: isinstance(rec.get(name), str) and rec[name][:15].lower() == head
        return None

    def sort_key(self, t: SObjectType, q: Query) -> Callable[[dict[str, Any]], Any]:
        def key(rec: dict[str, Any]) -> list[Any]:
            out = []
            for path, desc, nulls_last in q.order:
                v = _norm(self.field_def(t, path).type, self.resolve(rec, path))
                out.append(_Ordered(v, desc, nulls_last))
            return out
        return key


def _norm(ftype: str, v: Any) -> Any:
    if v is None:
        return None
    if ftype in ("id", "reference") and isinstance(v, str):
        return to18(v).lower() if looks_like_id(v) else v.lower()
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, datetime):
        return v.replace(microsecond=0)  # second precision (docs/reference/salesforce.md §2.2)
    return v


class _Ordered:
    __slots__ = ("v", "desc", "nulls_last")

    def __init__(self, v: Any, desc: bool, nulls_last: bool) -> None:
        self.v, self.desc, self.nulls_last = v, desc, nulls_last

    def __lt__(self, other: _Ordered) -> bool:
        a, b = self.v, other.v
        if a is None or b is None:
            if a is None and b is None:
                return False
            return (a is None) != self.nulls_last
        return a > b if self.desc else a < b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ordered) and self.v == other.v
