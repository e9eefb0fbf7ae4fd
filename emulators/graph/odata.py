"""A small OData ``$filter`` / ``$select`` / ``$expand`` subset, enough for what the sync adapter sends.

Supported ``$filter`` grammar (case-insensitive keywords)::

    expr    := and ('or' and)*
    and     := unary ('and' unary)*
    unary   := 'not' unary | '(' expr ')' | func | lambda | operand op operand
    func    := (startswith|endswith|contains) '(' path ',' literal ')'
    lambda  := path '/any(' var ':' expr ')'
    op      := eq | ne | gt | ge | lt | le

String comparisons are case-insensitive (Exchange behaviour for extended property values per
https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get "Filtering the value property of an
extended property is case-insensitive"; applied to every string here, which is a guess, see
docs/emulator-fidelity-graph.md), except an extended property's id (``PropertyId``): the same page says "Filtering the
string name (Name) in the id of an extended property is case-sensitive", so its type and GUID compare
case-insensitively and its ``Name`` part exactly.
``emailAddresses/any`` only allows ``a/address eq '…'`` as documented in
https://learn.microsoft.com/en-us/graph/api/user-list-contacts ("you can use $filter, any, and the eq operator on only
the address sub-property of instances in an emailAddresses collection").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any], dict[str, Any]], bool]


class ODataSyntaxError(ValueError):
    """The query option could not be parsed or uses something the emulator (or Graph) does not support."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<punct>[(),:])|(?P<name>[A-Za-z_$@][\w./$@-]*))"
)
_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCS = {"startswith", "endswith", "contains"}


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ODataSyntaxError(f"unexpected character at {pos} in $filter")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("lit", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            num = m.group("num")
            tokens.append(("lit", float(num) if "." in num else int(num)))
        elif m.group("punct") is not None:
            tokens.append((m.group("punct"), m.group("punct")))
        else:
            name = m.group("name")
            low = name.lower()
            if low in ("true", "false"):
                tokens.append(("lit", low == "true"))
            elif low == "null":
                tokens.append(("lit", None))
            else:
                tokens.append(("name", name))
    return tokens


def _get(obj: Any, key: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if k.lower() == low:
            return v
    return None


_PROPERTY_ID = re.compile(r"^\s*(\w+)\s+(\{[0-9a-fA-F-]+\})\s+(name|id)\s+(.+?)\s*$", re.I)


def property_id_key(text: str) -> tuple[str, ...]:
    """The identity of an extended property id ``"<Type> {<GUID>} Name <name>"``: the name case-sensitive, the rest
    not (a numeric ``Id 0x…`` form and anything unparsed compare case-insensitively)."""
    m = _PROPERTY_ID.match(text)
    if not m:
        return (text.casefold(),)
    kind, guid, form, name = m.groups()
    return kind.casefold(), guid.casefold(), form.casefold(), name if form.casefold() == "name" else name.casefold()


class PropertyId(str):
    """An extended property's id as a ``$filter`` sees it: ``eq`` / ``ne`` compare ``property_id_key``s."""

    __slots__ = ()


def _norm(v: Any) -> Any:
    return v.casefold() if isinstance(v, str) else v


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("eq", "ne") and isinstance(left, str) and isinstance(right, str) and (
            isinstance(left, PropertyId) or isinstance(right, PropertyId)):
        return (property_id_key(left) == property_id_key(right)) == (op == "eq")
    left, right = _norm(left), _norm(right)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])
    except TypeError:
        return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, Any] | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, kind: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (kind is not None and tok[0] != kind):
            raise ODataSyntaxError(f"expected {kind or 'token'} in $filter")
        self.i += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1].lower() in words:
            self.i += 1
            return str(tok[1].lower())
        return None

    def parse(self) -> Predicate:
        pred = self.expr(set())
        if self.peek() is not None:
            raise ODataSyntaxError("trailing tokens in $filter")
        return pred

    def expr(self, scope: set[str]) -> Predicate:
        parts = [self.and_(scope)]
        while self.keyword("or"):
            parts.append(self.and_(scope))
        if len(parts) == 1:
            return parts[0]
        return lambda root, env: any(p(root, env) for p in parts)

    def and_(self, scope: set[str]) -> Predicate:
        parts = [self.unary(scope)]
        while self.keyword("and"):
            parts.append(self.unary(scope))
        if len(parts) == 1:
            return parts[0]
        return lambda root, env: all(p(root, env) for p in parts)

    def unary(self, scope: set[str]) -> Predicate:
        if self.keyword("not"):
            inner = self.unary(scope)
            return lambda root, env: not inner(root, env)
        tok = self.peek()
        if tok and tok[0] == "(":
            self.take("(")
            inner = self.expr(scope)
            self.take(")")
            return inner
        if tok and tok[0] == "name" and tok[1].lower() in _FUNCS and (self.peek(1) or ("",))[0] == "(":
            return self.func(scope)
        if tok and tok[0] == "name" and tok[1].lower().endswith(("/any", "/all")):
            return self.lambda_(scope)
        left = self.operand(scope)
        op = self.keyword(*_OPS)
        if op is None:
            raise ODataSyntaxError("expected a comparison operator in $filter")
        right = self.operand(scope)
        return lambda root, env: _compare(op, left(root, env), right(root, env))

    def func(self, scope: set[str]) -> Predicate:
        name = str(self.take("name")[1]).lower()
        self.take("(")
        target = self.operand(scope)
        self.take(",")
        arg = self.operand(scope)
        self.take(")")

        def pred(root: dict[str, Any], env: dict[str, Any]) -> bool:
            value, needle = _norm(target(root, env)), _norm(arg(root, env))
            if not isinstance(value, str) or not isinstance(needle, str):
                return False
            return {"startswith": value.startswith, "endswith": value.endswith, "contains": value.__contains__}[name](
                needle
            )

        return pred

    def lambda_(self, scope: set[str]) -> Predicate:
        path = str(self.take("name")[1])
        coll_path, kind = path.rsplit("/", 1)
        kind = kind.lower()
        collection = self.path_getter(coll_path, scope)
        self.take("(")
        var = str(self.take("name")[1])
        self.take(":")
        start = self.i
        inner = self.expr(scope | {var})
        body_tokens = self.tokens[start : self.i]
        self.take(")")
        if coll_path.lower() == "emailaddresses":
            # user-list-contacts doc: only `any` with `eq` on the address sub-property is supported.
            ok = (
                kind == "any"
                and len(body_tokens) == 3
                and body_tokens[0][0] == "name"
                and str(body_tokens[0][1]).lower() == f"{var.lower()}/address"
                and body_tokens[1][0] == "name"
                and str(body_tokens[1][1]).lower() == "eq"
                and body_tokens[2][0] == "lit"
            )
            if not ok:
                raise ODataSyntaxError("emailAddresses supports only any(a: a/address eq '…')")

        def pred(root: dict[str, Any], env: dict[str, Any]) -> bool:
            items = collection(root, env) or []
            results = (inner(root, {**env, var: item}) for item in items)
            return any(results) if kind == "any" else all(results)

        return pred

    def operand(self, scope: set[str]) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
        tok = self.take()
        if tok[0] == "lit":
            value = tok[1]
            return lambda root, env: value
        if tok[0] == "name":
            return self.path_getter(str(tok[1]), scope)
        raise ODataSyntaxError("expected an operand in $filter")

    @staticmethod
    def path_getter(path: str, scope: set[str]) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
        parts = path.split("/")

        def get(root: dict[str, Any], env: dict[str, Any]) -> Any:
            if parts[0] in scope:
                value: Any = env.get(parts[0])
                rest = parts[1:]
            else:
                value, rest = root, parts
            for part in rest:
                value = _get(value, part)
            return value

        return get


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile an OData ``$filter`` into a predicate over a JSON object (camelCase keys)."""
    pred = _Parser(text).parse()
    return lambda obj: pred(obj, {})


_EXPAND_SVEP = re.compile(r"^\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<f>.*)\)\s*)?$", re.I)


def parse_expand(text: str) -> Callable[[dict[str, Any]], bool] | None:
    """Parse ``$expand=singleValueExtendedProperties($filter=id eq '…')``; returns the filter on {id, value}.

    Source: https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get ("Using the query
    parameter $expand ... Use a $filter and eq operator on the id property").
    """
    m = _EXPAND_SVEP.match(text)
    if not m:
        raise ODataSyntaxError("only $expand=singleValueExtendedProperties($filter=…) is supported")
    return compile_filter(m.group("f")) if m.group("f") else None


def parse_select(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [s.strip() for s in text.split(",") if s.strip()]
