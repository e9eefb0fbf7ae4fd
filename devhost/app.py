"""Finding and describing the functions of an azure-functions v2 app, the way the Python worker does.

Public API:
- ``load_module(spec)``: import ``function_app`` (a module name) or ``path/to/function_app.py``.
- ``find_function_app(module)``: the single ``FunctionRegister`` (``FunctionApp``/``AsgiFunctionApp``/...) among the
  module globals; the same rule and messages as the worker's ``loader.index_function_app`` (docs/reference/azure.md
  §1.1).
- ``discover(app) -> list[FunctionSpec]``: names, trigger, binding dicts and the raw user callables, read from the
  library's own metadata (``app.get_functions()``, ``Function.get_function_json()``, ``get_user_function()``).
- ``QueueOut``: a ``func.Out`` for ``queue_output`` bindings; ``InvocationContext``: a ``func.Context``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister

__all__ = ["FunctionSpec", "InvocationContext", "QueueOut", "discover", "find_function_app", "load_module"]


def load_module(spec: str) -> ModuleType:
    """Import an app module by dotted name, or by file path (its folder goes on sys.path, like the script root)."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).resolve()
        sys.path.insert(0, str(path.parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def find_function_app(module: ModuleType) -> FunctionRegister:
    apps = [value for value in vars(module).values() if isinstance(value, FunctionRegister)]
    if not apps:
        raise ValueError(f"Could not find top level function app instances in {module.__name__}.")
    if len(apps) > 1:
        raise ValueError(
            f"More than one {apps[0].__class__.__name__} or other top level function app instances are defined "
            f"in {module.__name__}."
        )
    return apps[0]


@dataclass(frozen=True)
class FunctionSpec:
    """One indexed function. ``bindings`` are the JSON-shaped dicts of ``get_function_json()``."""

    name: str
    trigger: dict[str, Any]
    bindings: tuple[dict[str, Any], ...]
    user_function: Callable[..., Any]
    is_http: bool
    parameters: tuple[str, ...] = field(default=())
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    @property
    def output_bindings(self) -> tuple[dict[str, Any], ...]:
        return tuple(b for b in self.bindings if str(b.get("direction", "")).upper() == "OUT")

    @property
    def unsupported_bindings(self) -> tuple[dict[str, Any], ...]:
        """Bindings the local host cannot supply (anything but the trigger, http out and queue out)."""
        return tuple(
            b
            for b in self.bindings
            if b is not self.trigger and b.get("type") not in ("http", "queue")
        )


def discover(app: FunctionRegister) -> list[FunctionSpec]:
    """Index ``app`` once. ``get_functions()`` raises on a second call in azure-functions 1.26.0
    (docs/reference/azure.md §1.5), so
    ``functions_bindings`` is reset first: a test that indexed the app before does not break the host."""
    if getattr(app, "functions_bindings", None):
        app.functions_bindings = None
    specs: list[FunctionSpec] = []
    for function in app.get_functions():
        document = json.loads(function.get_function_json())
        bindings = tuple(document["bindings"])
        trigger = next(b for b in bindings if str(b.get("type", "")).endswith("Trigger"))
        user_function = function.get_user_function()
        try:
            signature = inspect.signature(user_function)
            parameters = tuple(signature.parameters)
            annotations = {n: p.annotation for n, p in signature.parameters.items()}
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            parameters, annotations = (), {}
        specs.append(
            FunctionSpec(
                name=function.get_function_name(),
                trigger=trigger,
                bindings=bindings,
                user_function=user_function,
                is_http=function.is_http_function(),
                parameters=parameters,
                annotations=annotations,
            )
        )
    return specs


class QueueOut(func.Out[Any]):
    """``func.Out`` for a ``queue_output`` binding: whatever is ``set`` is enqueued after the function succeeds."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


def queue_payloads(value: Any) -> list[str]:
    """Texts to enqueue for an output value: str, bytes, a QueueMessage, or a list of those (like the worker)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes | bytearray):
        return [bytes(value).decode("utf-8")]
    if isinstance(value, func.QueueMessage):
        return [value.get_body().decode("utf-8")]
    if isinstance(value, list | tuple):
        return [text for item in value for text in queue_payloads(item)]
    raise TypeError(f"a queue output binding accepts str, bytes, QueueMessage or a list of them, not {type(value)}")


class InvocationContext(func.Context):
    """The ``context`` argument a function may declare; carries the invocation id and function name."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None
