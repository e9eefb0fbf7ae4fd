"""The ops CLI (``python -m opscli``) against the local functions host: reconcile with a dry run first, the review
inbox resolved end to end, status, jobs, and the exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.functions.conftest import ANN
from tests.functions.test_through_host import Stack, poll

pytestmark = pytest.mark.timeout(180)


def ops(s: Stack, *args: str, stdin: str = "", key: str | None = None, url: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNC_API_URL": url if url is not None else s.host.base_url,
           "SYNC_FUNCTION_KEY": key if key is not None else s.host.host_key, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "opscli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def ops_json(s: Stack, *args: str) -> Any:
    done = ops(s, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_cli_reconcile_dry_run_then_confirmed_real_run_with_progress(subscribed: Stack) -> None:
    s = subscribed
    s.sf.create_contact({"FirstName": "Barbara", "LastName": "Liskov", "Email": "liskov@mit.example",
                         "OwnerId": s.users[ANN]}, as_user=s.users[ANN])  # no CDC pull: only a reconcile finds it
    declined = ops(s, "reconcile", "--mailbox", ANN, "--mode", "full", stdin="n\n")
    assert declined.returncode == 6 and "dry run" in declined.stdout and "create:m365 1" in declined.stdout
    assert not [c for c in s.outlook(ANN) if c.get("surname") == "Liskov"]
    done = ops(s, "reconcile", "--mailbox", ANN, "--mode", "full", stdin="y\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Apply this plan?" in done.stdout and "real run" in done.stdout and f"{ANN} (done)" in done.stdout
    assert [c for c in s.outlook(ANN) if c.get("surname") == "Liskov"]
    jobs = ops_json(s, "jobs")["jobs"]
    assert [j["dryRun"] for j in jobs[:2]] == [False, True]


def test_cli_review_list_resolve_and_the_item_is_gone(subscribed: Stack) -> None:
    s = subscribed
    person = {"FirstName": "Frances", "LastName": "Allen", "Email": "allen@ibm.example", "OwnerId": s.users[ANN]}
    sf_ids = [s.sf.create_contact(person, as_user=s.users[ANN]),
              s.sf.create_contact({**person, "Title": "Fellow"}, as_user=s.users[ANN])]
    s.graph.create_contact(ANN, {"givenName": "Frances", "surname": "Allen",
                                 "emailAddresses": [{"address": "allen@ibm.example"}]}, s.folder(ANN))
    item = poll(lambda: next((i for i in ops_json(s, "review", "list", "--mailbox", ANN)["items"]
                              if set(c["id"] for c in i["candidates"]) == set(sf_ids)), None), "the review item")
    shown = ops(s, "review", "list", "--mailbox", ANN)
    assert shown.returncode == 0 and item["id"] in shown.stdout and "Fellow" in shown.stdout
    done = ops(s, "review", "resolve", item["id"], "link", "--candidate", sf_ids[1])
    assert done.returncode == 0 and "link recorded by key:" in done.stdout
    poll(lambda: item["id"] not in {i["id"] for i in ops_json(s, "review", "list")["items"]}, "the item gone")
    s.settle()
    linked = [c for c in s.sf.contacts() if c["Id"] == sf_ids[1]]
    assert linked and linked[0].get("Title") == "Fellow"


def test_cli_status_and_exit_codes(subscribed: Stack) -> None:
    s = subscribed
    done = ops(s, "status", "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == {"healthy": 0, "degraded": 1, "failing": 3}[doc["verdict"]["state"]]
    assert ops(s, "status", key="wrong").returncode == 4
    assert ops(s, "status", url="").returncode == 5
    assert ops(s, "review", "resolve", "0" * 24, "ignore").returncode == 4
    assert ops(s, "poison", "list", "nope").returncode == 2  # a usage error (click)
    assert ops_json(s, "poison", "list", "reconcile")["queue"] == "reconcile"
    assert ops(s, "poison", "discard", "reconcile", "no-such-id").returncode == 4  # 404 from the API
