"""Small HTTP helpers shared by the HTTP blueprints: the Graph validation handshake and bounded bodies."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from sync.triggers.errors import json_response

MAX_NOTIFICATION_BODY = 1024 * 1024  # Graph batches are far smaller; anything bigger is refused with 413
MAX_EVENTS_BODY = 1024 * 1024


def validation_token(req: func.HttpRequest) -> str | None:
    """The URL-decoded ``validationToken`` of a Graph handshake (docs/reference/graph.md §4.3), or None."""
    token = req.params.get("validationToken")
    if token is not None:
        return str(token)
    values = parse_qs(urlsplit(req.url).query, keep_blank_values=True).get("validationToken")
    return values[0] if values else None


def handshake(token: str) -> func.HttpResponse:
    """200, text/plain, exactly the decoded token (docs/reference/graph.md §4.3)."""
    return func.HttpResponse(token, status_code=200, mimetype="text/plain", charset="utf-8")


def bounded_body(req: func.HttpRequest, limit: int) -> bytes | func.HttpResponse:
    """The body, or a 413 response when it (or its declared Content-Length) exceeds ``limit`` bytes."""
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return json_response({"error": f"body larger than {limit} bytes"}, 413)
    body = req.get_body() or b""
    if len(body) > limit:
        return json_response({"error": f"body larger than {limit} bytes"}, 413)
    return body
