# Two commands matter on a fresh machine: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE := node_modules/.bin/azurite-table

.PHONY: demo test lint typecheck unit deps clean proto soak soak-short browser-deps

deps: $(VENV)/.installed $(AZURITE)

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The product end to end on local emulators: Azurite + Graph and Salesforce emulators, real SDKs, real engine.
demo: deps
	$(PY) -m demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# Azurite is started (free loopback ports, in-memory) and stopped by tests/conftest.py for the whole pytest session.
unit: deps
	$(PY) -m pytest

test: deps browser-deps lint typecheck infra-check unit

# Headless Chromium and its driver for the status page's browser test (tests/ops/test_status_browser.py), from
# Debian's packages (CI runs as root). When they cannot be installed the test fails and says so; it never skips.
.PHONY: browser-deps
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
		|| echo "browser-deps: apt-get could not install chromium chromium-driver; the browser test will fail"; \
	else echo "browser-deps: install chromium and chromium-driver (as root: apt-get install chromium chromium-driver); the browser test fails without them"; fi

clean:
	rm -rf $(VENV) .venv-infra node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Regenerate the Salesforce Pub/Sub API gRPC stubs from sync/adapters/salesforce/pubsub_api/pubsub_api.proto (committed).
proto: $(VENV)/.installed
	PYTHON=$(PY) bash scripts/gen_pubsub_stubs.sh

# Offline Bicep checks (pycep-parser + checkov) with their own venv .venv-infra; see infra/check.py.
.PHONY: infra-check
infra-check:
	$(PYTHON) infra/check.py

# The demo without the ending: everything stays up (host, emulators, Azurite, CDC timer) until Ctrl-C.
.PHONY: demo-up bench soak
demo-up: deps
	$(PY) -m demo --keep-running

# Benchmarks print numbers (no pass/fail) and write bench/results.json; method and results: docs/performance.md.
# scale: 10 mailboxes x 1,000 contacts (calls vs theoretical minimum) and one 100,000-contact mailbox (peak RSS).
bench: deps
	$(PY) -m bench.import_time
	$(PY) -m bench.webhook_ack
	$(PY) -m bench.cold_start
	$(PY) -m bench.webhook_flood
	$(PY) -m bench.latency
	$(PY) -m bench.cdc_latency
	$(PY) -m bench.scale

# Graph's per-mailbox limit with 1 and 3 devhost processes (docs/performance.md): not in `bench`, it takes about an
# hour at its defaults (5,000 contacts reassigned to one rep, 20 mailboxes x 200 edits, 4 runs) on 2 cores.
.PHONY: bench-mailbox-limit
bench-mailbox-limit: deps
	$(PY) -m bench.mailbox_limit

# Requests per contact reassigned into one mailbox, in one process (docs/performance.md): a few minutes.
.PHONY: bench-reassign-cost
bench-reassign-cost: deps
	$(PY) -m bench.reassign_cost

# 2,000 mailboxes x 25 contacts: subscriptions created and renewed, the reconcile timer's fan-out, a no-change delta
# pass (most of an hour on 2 cores, so not part of `make bench`; writes bench/results-mailboxes.json).
.PHONY: bench-mailboxes
bench-mailboxes: deps
	$(PY) -m bench.mailboxes --mailboxes 2000 --per-mailbox 25

# The soak with faults (tests/soak/): minutes of random edits on both sides under injected faults, then a reconcile
# and the checks (agreement, no duplicates, no lost edits, no resurrections, throttling limits). `make soak-short` is
# the 40-second profile (tests/soak/test_soak.py), also part of `make test`; `make soak` the 5-minute one with the
# strict Graph switches (If-Match ignored, random delta resets; SEED=n for another random run) on 3 host instances
# (the short profile runs 2).
SEED ?= 1
soak-short: deps
	$(PY) -m pytest -m soak tests/soak
soak: deps
	$(PY) -m tests.soak.run --minutes 5 --seed $(SEED) --strict-graph --strict-org
