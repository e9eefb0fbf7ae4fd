"""Settings and host.json for the local functions host (docs/reference/azure.md §1.3, §1.4).

Public API:
- ``load_local_settings(path) -> dict[str, str]``: the ``Values`` of a ``local.settings.json``;
  ``local_http_port(path)``: its ``Host.LocalHttpPort``.
- ``resolve(value, settings, what)``: replace ``%NAME%`` app-setting references (raises ``SettingNotFound``).
- ``load_host_json(path_or_dict, environ) -> dict``: host.json plus ``AzureFunctionsJobHost__a__b`` overrides.
- ``QueueOptions.from_host_config(config)``: ``extensions.queues`` with the documented defaults.
- ``route_prefix(config)``: ``extensions.http.routePrefix`` (default ``api``).
- ``parse_timespan("00:00:02.5")``: a .NET ``[d.]hh:mm:ss[.fff]`` timespan as seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "QueueOptions",
    "SettingNotFound",
    "load_host_json",
    "load_local_settings",
    "local_http_port",
    "parse_timespan",
    "resolve",
    "route_prefix",
]

_SETTING = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$")
HOST_OVERRIDE_PREFIX = "AzureFunctionsJobHost__"


class SettingNotFound(KeyError):
    """A ``%NAME%`` reference (or a connection setting) that no app setting defines."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(name)
        self.name = name
        self.what = what

    def __str__(self) -> str:
        return f"app setting {self.name!r} (used by {self.what}) is not defined; add it to local.settings.json Values"


def load_local_settings(path: str | Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json, as strings (``IsEncrypted: true`` files are refused)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("IsEncrypted"):
        raise ValueError(f"{path}: encrypted local.settings.json is not supported by the local host")
    values = data.get("Values") or {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def local_http_port(path: str | Path, default: int = 7071) -> int:
    """``Host.LocalHttpPort`` of a local.settings.json (Core Tools' default port is 7071)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return int((data.get("Host") or {}).get("LocalHttpPort") or default)


def resolve(value: Any, settings: Mapping[str, str], what: str) -> Any:
    """Replace every ``%NAME%`` in a string binding value by the app setting ``NAME``; other values pass through."""
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise SettingNotFound(name, what)
        return settings[name]

    return _SETTING.sub(lookup, value)


def parse_timespan(value: Any, what: str = "timespan") -> float:
    """Seconds in a .NET timespan string ``[d.]hh:mm:ss[.fffffff]``; numbers are taken as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise ValueError(f"{what}: {value!r} is not a timespan like '00:00:30' or '1.00:00:00'")
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def load_host_json(source: str | Path | Mapping[str, Any] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """host.json (a path, an already-parsed dict, or None for ``{}``) with app-setting overrides applied.

    ``AzureFunctionsJobHost__extensions__queues__maxDequeueCount=2`` overrides ``extensions.queues.maxDequeueCount``
    (docs/reference/azure.md §1.3). Path segments match existing keys case-insensitively, as the host's configuration
    does.
    """
    if source is None:
        config: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        config = json.loads(json.dumps(source))  # deep copy
    else:
        config = json.loads(Path(source).read_text(encoding="utf-8"))
    for key, value in environ.items():
        if key.startswith(HOST_OVERRIDE_PREFIX):
            _set_path(config, key[len(HOST_OVERRIDE_PREFIX) :].split("__"), value)
    return config


def _set_path(config: dict[str, Any], path: list[str], value: str) -> None:
    node = config
    for i, segment in enumerate(path):
        existing = next((k for k in node if k.lower() == segment.lower()), segment)
        if i == len(path) - 1:
            node[existing] = value
        else:
            child = node.get(existing)
            if not isinstance(child, dict):
                child = node[existing] = {}
            node = child


def _section(config: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    node: Any = config
    for segment in path:
        if not isinstance(node, Mapping):
            return {}
        node = next((v for k, v in node.items() if k.lower() == segment.lower()), {})
    return node if isinstance(node, Mapping) else {}


def _get(section: Mapping[str, Any], name: str, default: Any) -> Any:
    return next((v for k, v in section.items() if k.lower() == name.lower()), default)


def route_prefix(config: Mapping[str, Any]) -> str:
    """``extensions.http.routePrefix`` without surrounding slashes; ``""`` serves functions at the root."""
    value = _get(_section(config, "extensions", "http"), "routePrefix", "api")
    return str(value).strip("/")


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` of host.json; defaults from the Learn table quoted in docs/reference/azure.md §1.3."""

    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    batch_size: int = 16
    max_dequeue_count: int = 5
    new_batch_threshold: int | None = None
    message_encoding: str = "base64"

    @classmethod
    def from_host_config(cls, config: Mapping[str, Any]) -> QueueOptions:
        section = _section(config, "extensions", "queues")
        encoding = str(_get(section, "messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"host.json extensions.queues.messageEncoding must be base64 or none, not {encoding!r}")
        batch_size = int(_get(section, "batchSize", 16))
        if not 1 <= batch_size <= 32:
            raise ValueError(f"host.json extensions.queues.batchSize must be 1..32, not {batch_size}")
        threshold = _get(section, "newBatchThreshold", None)
        polling = parse_timespan(_get(section, "maxPollingInterval", "00:01:00"), "maxPollingInterval")
        max_dequeue = int(_get(section, "maxDequeueCount", 5))
        if max_dequeue < 1:
            raise ValueError(f"host.json extensions.queues.maxDequeueCount must be >= 1, not {max_dequeue}")
        return cls(
            max_polling_interval=max(polling, 0.1),  # the documented minimum is 100 ms
            visibility_timeout=parse_timespan(_get(section, "visibilityTimeout", "00:00:00"), "visibilityTimeout"),
            batch_size=batch_size,
            max_dequeue_count=max_dequeue,
            new_batch_threshold=None if threshold is None else int(threshold),
            message_encoding=encoding,
        )

    @property
    def max_concurrency(self) -> int:
        """batchSize + newBatchThreshold (newBatchThreshold defaults to batchSize/2 with one vCPU)."""
        threshold = self.new_batch_threshold if self.new_batch_threshold is not None else self.batch_size // 2
        return self.batch_size + max(threshold, 0)
