"""Small HTTP helpers shared by the HTTP blueprints: the Graph validation handshake, bounded bodies, strict JSON.

Body limits (docs/operations.md "The endpoints"): the POST functions read at most their ``MAX_*_BODY`` bytes (413
beyond); the GET functions never read a body. ``load_json`` refuses duplicate object keys anywhere in the document:
with Python's decoder the last one would win silently (``{"dryRun": true, "dryRun": false}``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from sync.triggers.errors import NOSNIFF, json_response

MAX_NOTIFICATION_BODY = 1024 * 1024  # Graph batches are far smaller; anything bigger is refused with 413
MAX_EVENTS_BODY = 1024 * 1024
MAX_RECONCILE_BODY = 64 * 1024  # four keys and a list of mailboxes


class BadJson(ValueError):
    """A body that is not strict JSON; the message quotes nothing from the body."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise BadJson("body has a duplicate key")
    return doc


def load_json(body: bytes) -> Any:
    """The parsed body; raises BadJson for invalid JSON, absurd nesting or a duplicate key in any object."""
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except BadJson:
        raise
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder's recursion limit
        raise BadJson("body is not JSON") from None


def validation_token(req: func.HttpRequest) -> str | None:
    """The URL-decoded ``validationToken`` of a Graph handshake (docs/reference/graph.md §4.3), or None."""
    token = req.params.get("validationToken")
    if token is not None:
        return str(token)
    values = parse_qs(urlsplit(req.url).query, keep_blank_values=True).get("validationToken")
    return values[0] if values else None


def handshake(token: str) -> func.HttpResponse:
    """200, text/plain, exactly the decoded token (docs/reference/graph.md §4.3)."""
    return func.HttpResponse(token, status_code=200, mimetype="text/plain", charset="utf-8", headers=dict(NOSNIFF))


def bounded_body(req: func.HttpRequest, limit: int) -> bytes | func.HttpResponse:
    """The body, or a 413 response when it (or its declared Content-Length) exceeds ``limit`` bytes."""
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return json_response({"error": f"body larger than {limit} bytes"}, 413)
    body = req.get_body() or b""
    if len(body) > limit:
        return json_response({"error": f"body larger than {limit} bytes"}, 413)
    return body
