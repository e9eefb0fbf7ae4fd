"""docs/operations.md names real things: every ``/api/...`` route and HTTP method it mentions is an HTTP function of
the app, every JSON body its curl examples POST to /api/reconcile is accepted by the code, and its example of the job
status has the field names ``job_json`` produces."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest

from sync.ports import MailboxJob, ReconcileJob
from sync.triggers import BLUEPRINT_MODULES
from sync.triggers.reconcile import BadRequest, job_json, parse_request

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    template: str
    methods: frozenset[str]


def http_routes() -> list[Route]:
    """The HTTP functions of a fresh app with every blueprint registered (get_functions() works once per app)."""
    import function_app

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for name in BLUEPRINT_MODULES:
        app.register_functions(importlib.import_module(f"sync.triggers.{name}").bp)
    functions = app.get_functions()
    # the same functions as the real entry point registers
    assert {f.get_function_name() for f in functions} == {
        fb._function.get_function_name() for fb in function_app.app._function_builders
    }
    host = json.loads((ROOT / "host.json").read_text())
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    routes = []
    for fn in functions:
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next((b for b in bindings if b["type"] == "httpTrigger"), None)
        if trigger is None:
            continue
        template = "/" + "/".join(p for p in (prefix, trigger["route"]) if p)
        regex = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template))  # {job} -> one path segment
        methods = frozenset(m.upper() for m in trigger.get("methods") or METHODS)
        routes.append(Route(re.compile(regex + r"/?"), template, methods))
    assert routes
    return routes


def _clean(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0].rstrip(".,;:")


# a path: /api/ then segments of letters, digits, - _ . and placeholders like {job}, <job>, $JOB
_PATH = r"/api(?:/(?:[\w.\-]|\{[^}\s]*\}|<[^>\s]*>|\$\{?\w+\}?)+)*"


def mentions(text: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) pairs written as ``GET /api/...`` or as curl commands, and every /api path mentioned."""
    pairs = {(m, _clean(p)) for m, p in re.findall(rf"\b({'|'.join(METHODS)})\s+({_PATH})", text)}
    for cmd in curl_commands(text):
        url = next((a for a in cmd if "/api" in a), None)
        if url is None:
            continue
        path = _clean(re.search(_PATH, url).group(0))  # type: ignore[union-attr]
        pairs.add((curl_method(cmd), path))
    paths = {_clean(p) for p in re.findall(_PATH, text)}
    return pairs, paths


def curl_commands(text: str) -> list[list[str]]:
    """Every curl command of the doc's code blocks, as argument lists (backslash continuations joined)."""
    out = []
    for lang, block in code_blocks(text):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("curl "):
                out.append(shlex.split(line, comments=True))
    return out


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every fenced code block, indented ones (inside list items) included."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        fence = re.match(r"\s*```(\w*)\s*$", line)
        if fence and lang is None:
            lang, lines = fence.group(1), []
        elif fence:
            blocks.append((lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def curl_method(cmd: list[str]) -> str:
    for i, arg in enumerate(cmd):
        if arg in ("-X", "--request") and i + 1 < len(cmd):
            return cmd[i + 1].upper()
        if arg.startswith("-X") and len(arg) > 2:
            return arg[2:].upper()
    return "POST" if any(a in ("-d", "--data", "--data-raw", "--json") for a in cmd) else "GET"


def curl_body(cmd: list[str]) -> str | None:
    for i, arg in enumerate(cmd):
        if arg in ("-d", "--data", "--data-raw", "--json") and i + 1 < len(cmd):
            return cmd[i + 1]
    return None


def unknown_routes(text: str, routes: list[Route]) -> list[str]:
    pairs, paths = mentions(text)
    problems = []
    for method, path in sorted(pairs):
        if not any(r.pattern.fullmatch(path) and method in r.methods for r in routes):
            problems.append(f"{method} {path}")
    for path in sorted(paths):
        if not any(r.pattern.fullmatch(path) for r in routes):
            problems.append(path)
    return problems


def reconcile_bodies(text: str) -> list[str]:
    return [body for cmd in curl_commands(text)
            if curl_method(cmd) == "POST" and any(re.search(r"/api/reconcile/?(?:[?\"']|$)", a) for a in cmd)
            and (body := curl_body(cmd)) is not None]


def refused_bodies(bodies: list[str]) -> list[str]:
    """Bodies the code refuses (400), given a scope that holds every mailbox the examples name."""
    scope = tuple(sorted({m.casefold() for b in bodies for m in re.findall(r"[\w.\-]+@[\w.\-]+", b)}))
    problems = []
    for body in bodies:
        try:
            parse_request(body.encode(), scope)
        except BadRequest as exc:
            problems.append(f"{body}: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------- the doc


def test_every_route_and_method_in_operations_md_is_an_http_function() -> None:
    text = DOC.read_text()
    routes = http_routes()
    pairs, paths = mentions(text)
    # the parser found the documented endpoints (so the check below is not vacuously green)
    assert {("POST", "/api/reconcile"), ("GET", "/api/reconcile/{job}"), ("GET", "/api/status"),
            ("POST", "/api/graph/notifications"), ("POST", "/api/graph/lifecycle"),
            ("POST", "/api/salesforce/events")} <= pairs
    assert len(paths) >= 6
    assert unknown_routes(text, routes) == [], "docs/operations.md names routes the app does not have"


def test_reconcile_bodies_in_operations_md_are_accepted_by_the_code() -> None:
    bodies = reconcile_bodies(DOC.read_text())
    assert len(bodies) >= 5
    used = set().union(*(json.loads(b).keys() for b in bodies))
    assert used == {"mailboxes", "mode", "dryRun", "force"}  # every accepted key is shown at least once
    assert refused_bodies(bodies) == []


def test_job_status_example_in_operations_md_has_the_real_field_names() -> None:
    text = DOC.read_text()
    example = next(json.loads(b) for lang, b in code_blocks(text)
                   if lang == "json" and '"progress"' in b and '"refusals"' in b)
    now = datetime.now(UTC)
    job = ReconcileJob(id="0" * 32, created=now, mode="delta",
                       mailboxes={"adele@contoso.com": MailboxJob(mailbox="adele@contoso.com")})
    real = job_json(job)
    assert list(example) == list(real)
    assert set(example["progress"]) == set(real["progress"])
    for mailbox in example["mailboxes"]:
        assert list(mailbox) == list(real["mailboxes"][0])


# ---------------------------------------------------------------------------------------------- the checks can fail


def test_the_checks_catch_a_wrong_route_method_or_body() -> None:
    routes = http_routes()
    bad = """
Start with `DELETE /api/reconcile/{job}` or see `/api/subscriptions`.

```bash
curl -sS -X POST "https://$HOST/api/status" -H "x-functions-key: $KEY"
curl -sS -X POST "https://$HOST/api/reconcile" -H "Content-Type: application/json" \\
  -d '{"mailbox": "adele@contoso.com", "dryRun": "true"}'
```
"""
    assert unknown_routes(bad, routes) == ["DELETE /api/reconcile/{job}", "POST /api/status", "/api/subscriptions"]
    assert len(refused_bodies(reconcile_bodies(bad))) == 1
    good = 'See `GET /api/reconcile/<job>` and `POST /api/graph/lifecycle` (https://<host>/api/status?code=<key>).'
    assert unknown_routes(good, routes) == []


@pytest.mark.parametrize("body", ['{"mailboxes": "adele@contoso.com"}', '{"mode": "fast"}', '{"force": 1}',
                                  '{"dry_run": true}'])
def test_refused_bodies_are_reported(body: str) -> None:
    assert refused_bodies([body]) != []
