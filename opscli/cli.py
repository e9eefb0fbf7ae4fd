"""The ops CLI's commands (click) and their output (rich tables and progress bars, or ``--json``).

Exit codes: 0 fine; 1 degraded (status) or finished with problems (reconcile); 2 usage error; 3 failing (status)
or refused by the circuit breaker (reconcile); 4 the API answered with an error; 5 the API cannot be reached or
is not configured; 6 the operator declined the real run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from opscli.client import EXIT_DECLINED, EXIT_DEGRADED, EXIT_FAILING, EXIT_OK, Api, ApiError

console = Console()
POLL_S = 1.0
DONE = ("done", "failed", "refused")


def _emit(as_json: bool, doc: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        human()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(exc.exit_code)


@click.group(cls=_Group)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Operate the contact sync through its HTTP API (SYNC_API_URL, SYNC_FUNCTION_KEY)."""
    ctx.obj = Api.from_env()


# ---------------------------------------------------------------------------------------------- status


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the status document as JSON")
@click.pass_obj
def status(api: Api, as_json: bool) -> None:
    """The verdict and per-mailbox health. Exit 0 healthy, 1 degraded, 3 failing."""
    doc = api.call("GET", "status", params={"format": "json"})

    def human() -> None:
        v = doc["verdict"]
        colour = {"healthy": "green", "degraded": "yellow", "failing": "red"}[v["state"]]
        console.print(f"[bold {colour}]{v['state'].upper()}[/]")
        for reason in v["reasons"]:
            console.print(f"  - {reason}", highlight=False)
        table = Table("mailbox", "subscription h left", "last delta", "lag s", "failures 1h", "review", "refusals")
        for mb in doc["mailboxes"]:
            sub, delta = mb["subscription"], mb["lastDelta"]
            table.add_row(mb["mailbox"], str(sub["hoursLeft"]) if sub else "none",
                          f"{delta['state']} {delta['at']}" if delta else "-", str(mb["lagSeconds"]),
                          str(len(mb["failures"])), str(mb["openReview"]), str(mb["refusals"]))
        console.print(table)

    _emit(as_json, doc, human)
    sys.exit({"healthy": EXIT_OK, "degraded": EXIT_DEGRADED}.get(doc["verdict"]["state"], EXIT_FAILING))


# ---------------------------------------------------------------------------------------------- reconcile


def _wait(api: Api, job_id: str, progress: Progress | None, mailboxes: list[str]) -> dict[str, Any]:
    """Poll the job until every mailbox finished; one progress bar per mailbox."""
    tasks: dict[str, TaskID] = {}
    if progress is not None:
        tasks = {m: progress.add_task(m, total=1) for m in mailboxes}
    while True:
        job = api.call("GET", f"reconcile/{job_id}")
        if progress is not None:
            for mb in job["mailboxes"]:
                counts = _counts(mb["applied"] or mb["planned"])
                progress.update(tasks[mb["mailbox"]], completed=1 if mb["state"] in DONE else 0,
                                description=escape(f"{mb['mailbox']} ({mb['state']}) {counts}"))
        if all(mb["state"] in DONE for mb in job["mailboxes"]):
            return job  # type: ignore[no-any-return]
        time.sleep(POLL_S)


def _run(api: Api, body: dict[str, Any], quiet: bool, title: str) -> dict[str, Any]:
    started = api.call("POST", "reconcile", body)
    scope = body.get("mailboxes")
    mailboxes = scope if isinstance(scope, list) else []
    if quiet:
        return _wait(api, started["id"], None, mailboxes)
    first = api.call("GET", f"reconcile/{started['id']}")
    console.print(f"{title}: job {started['id']}", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console, transient=False) as progress:
        return _wait(api, started["id"], progress, [m["mailbox"] for m in first["mailboxes"]])


def _job_exit(job: dict[str, Any]) -> int:
    if job["refusals"]:
        return EXIT_FAILING
    return EXIT_OK if job["state"] == "done" else EXIT_DEGRADED


@cli.command()
@click.option("--mailbox", "mailboxes", multiple=True, help="a mailbox in scope (repeat); default: every one")
@click.option("--mode", type=click.Choice(["delta", "full"]), default="delta", show_default=True)
@click.option("--force", is_flag=True, help="apply even if the circuit breaker would refuse")
@click.option("--yes", is_flag=True, help="apply without asking after the dry run")
@click.option("--json", "as_json", is_flag=True, help="JSON output (the real run needs --yes)")
@click.pass_obj
def reconcile(api: Api, mailboxes: tuple[str, ...], mode: str, force: bool, yes: bool, as_json: bool) -> None:
    """Dry run first, show the plan counts, confirm, then the real run with a progress bar per mailbox."""
    # the API wants the scope named: a list, or "all" (never implied by a missing key)
    body: dict[str, Any] = {"mode": mode, "force": force, "mailboxes": list(mailboxes) if mailboxes else "all"}
    dry = _run(api, {**body, "dryRun": True}, as_json, "dry run")
    if not as_json:
        table = Table("mailbox", "state", "ran", "visited", "planned")
        for mb in dry["mailboxes"]:
            table.add_row(mb["mailbox"], mb["state"], str(mb["ran"]), str(mb["visited"]), _counts(mb["planned"]))
        console.print(table)
        console.print(f"planned in all: {_counts(dry['planned'])}", highlight=False)
        for refused in dry["refusals"]:
            console.print(f"[yellow]circuit breaker would refuse {refused}[/] (--force to apply)", highlight=False)
    if not yes and (as_json or not click.confirm("Apply this plan?", default=False)):
        _emit(as_json, {"dryRun": dry, "applied": None}, lambda: console.print("not applied"))
        sys.exit(EXIT_DECLINED if not as_json else _job_exit(dry))
    real = _run(api, body, as_json, "real run")
    _emit(as_json, {"dryRun": dry, "applied": real},
          lambda: console.print(f"applied: {_counts(real['applied'])}; state {real['state']}", highlight=False))
    sys.exit(_job_exit(real))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=10, show_default=True)
@click.pass_obj
def jobs(api: Api, as_json: bool, limit: int) -> None:
    """The newest reconcile jobs (API, timer, lifecycle, CDC)."""
    doc = api.call("GET", "ops/jobs", params={"limit": limit})

    def human() -> None:
        table = Table("created", "origin", "mode", "ran", "state", "progress", "applied")
        for j in doc["jobs"]:
            table.add_row(j["created"], j["origin"], j["mode"] + (" (dry run)" if j["dryRun"] else ""),
                          str(j["ran"]), j["state"], f"{j['progress']['done']}/{j['progress']['total']}",
                          _counts(j["applied"] or j["planned"]))
        console.print(table)

    _emit(as_json, doc, human)


# ---------------------------------------------------------------------------------------------- review


@cli.group()
def review() -> None:
    """The review inbox: contacts a person must decide about."""


@review.command("list")
@click.option("--mailbox")
@click.option("--state", type=click.Choice(["open", "decided", "all"]), default="open", show_default=True)
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def review_list(api: Api, mailbox: str | None, state: str, limit: int, offset: int, as_json: bool) -> None:
    """Items with the record and its candidates side by side (synced fields: personal data, on screen only)."""
    params = {"state": state, "limit": limit, "offset": offset, **({"mailbox": mailbox} if mailbox else {})}
    doc = api.call("GET", "review", params=params)

    def human() -> None:
        console.print(f"{doc['total']} item(s) ({state})", highlight=False)
        for item in doc["items"]:
            console.print(f"\n[bold]{item['id']}[/] {item['mailbox']} {item['side']} {item['recordId']}: "
                          f"{item['reason']}", highlight=False)
            records = [item["record"], *item["candidates"]]
            table = Table("field", *[f"{r['side']} {r['id']}" + (" (linked)" if r.get("linked") else "")
                                     for r in records])
            keys = list((item["record"].get("fields") or {}).keys())
            for key in keys:
                table.add_row(key, *[str((r.get("fields") or {}).get(key) or "") for r in records])
            console.print(table)

    _emit(as_json, doc, human)


@review.command("resolve")
@click.argument("item_id")
@click.argument("decision", type=click.Choice(["link", "create", "separate", "ignore"]))
@click.option("--candidate", "candidates", multiple=True, help="link: the one to link; separate: from which")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def review_resolve(api: Api, item_id: str, decision: str, candidates: tuple[str, ...], as_json: bool) -> None:
    """Record a decision; the sync applies it within seconds."""
    doc = api.call("POST", f"review/{item_id}", {"decision": decision, "candidates": list(candidates)})
    _emit(as_json, doc, lambda: console.print(f"{item_id}: {doc['decision']} recorded by {doc['decidedBy']}",
                                              highlight=False))


# ---------------------------------------------------------------------------------------------- poison, subscriptions

QUEUE = click.Choice(["contact-changes", "reconcile"])


@cli.group()
def poison() -> None:
    """Messages the functions gave up on."""


@poison.command("list")
@click.argument("queue", type=QUEUE)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def poison_list(api: Api, queue: str, as_json: bool) -> None:
    doc = api.call("GET", f"ops/poison/{queue}")

    def human() -> None:
        table = Table("id", "at", "error", "reason")
        for m in doc["messages"]:
            table.add_row(m["id"], str(m["at"]), str(m["error"]), str(m["reason"])[:120])
        console.print(f"{queue}-poison: {doc['depth']} message(s)", highlight=False)
        console.print(table)

    _emit(as_json, doc, human)


def _poison_command(action: str, help_text: str) -> None:
    """``poison requeue`` and ``poison discard``: the same call with another action."""

    @click.argument("queue", type=QUEUE)
    @click.argument("message_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def command(api: Api, queue: str, message_id: str, as_json: bool) -> None:
        doc = api.call("POST", f"ops/poison/{queue}/{message_id}", {"action": action})
        _emit(as_json, doc, lambda: console.print(f"{message_id}: {action}d", highlight=False))

    poison.command(action, help=help_text)(command)


_poison_command("requeue", "Send the original message back to its queue.")
_poison_command("discard", "Drop the message.")


@cli.command()
@click.argument("action", type=click.Choice(["refresh", "remove"]))
@click.option("--mailbox", "mailboxes", multiple=True, help="remove: only these (default: every stored one)")
@click.option("--yes", is_flag=True, help="remove without asking")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def subscriptions(api: Api, action: str, mailboxes: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """refresh: the subscriptions timer's work now; remove: delete Graph subscriptions now (uninstall)."""
    if action == "remove" and not yes and not click.confirm(
            f"Delete the Graph subscriptions of {', '.join(mailboxes) or 'every mailbox'}?", default=False):
        sys.exit(EXIT_DECLINED)
    body: dict[str, Any] = {"action": action, **({"mailboxes": list(mailboxes)} if mailboxes else {})}
    doc = api.call("POST", "ops/subscriptions", body)
    def show() -> None:
        console.print(f"{action}: {_counts(doc['counts'])}", highlight=False)
        scope = doc.get("scope") or {}
        if scope.get("groupId"):
            console.print(f"mailbox group {scope['groupId']}: {scope.get('members')} member(s), read "
                          f"{scope.get('readAt')}", highlight=False)
        if scope.get("lastError"):
            console.print(f"[red]group read failed[/red] at {scope.get('lastErrorAt')}: {scope['lastError']} "
                          "(the last list is kept)", highlight=False)

    _emit(as_json, doc, show)


def main() -> None:
    cli()
