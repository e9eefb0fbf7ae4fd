"""Offline checks of the Bicep in infra/ (``make infra-check``); no Bicep CLI exists offline (docs/reference/azure.md
§7).

1. Installs its pinned tools (infra/check-requirements.txt: checkov 3.3.30 with pycep-parser 0.5.1) into its own
   virtual environment ``.venv-infra`` -- never into the app's ``.venv``, whose dependencies would clash.
2. Parses every ``.bicep`` file with pycep-parser (syntax only: no types, no API versions).
3. Refuses registry modules (``br:`` / ``br/public:``): checkov cannot see inside them.
4. Runs ``checkov -d infra --framework bicep --skip-download`` and fails on any failed check or parsing error, on a
   skip without a reason (``// checkov:skip=CKV_...: reason``), and on a skip that no longer matches a finding.

Run with any Python >= 3.11 (stdlib only); it re-runs itself inside ``.venv-infra`` for step 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
VENV = ROOT / ".venv-infra"
REQUIREMENTS = INFRA / "check-requirements.txt"
STAMP = VENV / ".installed"
VENV_PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
CHECKOV = VENV / ("Scripts/checkov.cmd" if os.name == "nt" else "bin/checkov")

SKIP_RE = re.compile(r"//\s*checkov:skip=(?P<id>CKV2?_[A-Z]+_\d+)(?::(?P<reason>.*))?")
REGISTRY_RE = re.compile(r"""^\s*module\s+\w+\s+'br[:/]""", re.MULTILINE)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def ensure_venv() -> None:
    """Create .venv-infra and install the pinned tools, unless the stamp says they are already there."""
    wanted = REQUIREMENTS.read_text()
    if VENV_PY.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    started = time.monotonic()
    print(f"infra-check: installing {', '.join(_pins(wanted))} into {VENV.name} ...", flush=True)
    if not VENV_PY.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    # keeps the tools out of git and out of `ruff check .` (Python >= 3.13 venvs write this file themselves)
    (VENV / ".gitignore").write_text("*\n")
    result = subprocess.run(
        [str(VENV_PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("infra-check: installing the tools failed (see pip output above)")
    STAMP.write_text(wanted)
    print(f"infra-check: tools installed in {time.monotonic() - started:.0f} s", flush=True)


def _pins(requirements: str) -> list[str]:
    return [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]


def parse_all() -> int:
    """Inside .venv-infra: parse each file with pycep; print one JSON line per file. Exit 1 on any parse error."""
    from pycep import BicepParser  # only importable inside .venv-infra

    failed = 0
    for path in bicep_files():
        rel = path.relative_to(ROOT).as_posix()
        try:
            tree = BicepParser().parse(file_path=path)
        except Exception as exc:  # lark raises several exception types; report them all the same way
            failed += 1
            print(json.dumps({"file": rel, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}))
            continue
        sections = ("parameters", "variables", "resources", "modules", "outputs")
        counts = {key: len(tree.get(key) or {}) for key in sections}
        print(json.dumps({"file": rel, **counts}))
    return 1 if failed else 0


def run_parse() -> tuple[list[dict[str, Any]], bool]:
    result = subprocess.run([str(VENV_PY), str(Path(__file__).resolve()), "--parse"], capture_output=True, text=True)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 and not any("error" in row for row in rows):
        sys.stderr.write(result.stderr)
    return rows, result.returncode == 0


def declared_skips() -> dict[tuple[str, str], str]:
    """(file relative to infra/, check id) -> reason, for every inline skip comment."""
    skips: dict[tuple[str, str], str] = {}
    for path in bicep_files():
        for match in SKIP_RE.finditer(path.read_text()):
            skips[(path.relative_to(INFRA).as_posix(), match["id"])] = (match["reason"] or "").strip()
    return skips


def run_checkov() -> dict[str, Any]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit("infra-check: checkov did not produce a JSON report") from None
    if isinstance(report, list):  # one entry per framework
        report = next(r for r in report if r.get("check_type") == "bicep")
    if "results" not in report:  # checkov prints a bare summary when it found nothing to scan
        raise SystemExit(f"infra-check: checkov scanned nothing: {report}")
    return report


def main() -> int:
    if "--parse" in sys.argv:
        return parse_all()
    started = time.monotonic()
    ensure_venv()
    problems: list[str] = []

    rows, parsed_ok = run_parse()
    print(f"\npycep-parser: {len(rows)} Bicep files")
    for row in rows:
        if "error" in row:
            problems.append(f"parse error in {row['file']}: {row['error']}")
            print(f"  FAIL {row['file']}: {row['error']}")
        else:
            print(
                f"  ok   {row['file']}: {row['resources']} resources, {row['modules']} modules, "
                f"{row['parameters']} params, {row['outputs']} outputs"
            )
    if not parsed_ok and not problems:
        problems.append("pycep-parser failed (see stderr)")
    declared_resources = sum(int(row.get("resources", 0)) for row in rows)

    for path in bicep_files():
        if REGISTRY_RE.search(path.read_text()):
            problems.append(f"{path.relative_to(ROOT)} uses a registry module (br:); checkov cannot scan it")

    report = run_checkov()
    summary = report["summary"]
    results = report["results"]
    failed = results.get("failed_checks", [])
    skipped = results.get("skipped_checks", [])
    print(
        f"\ncheckov {summary.get('checkov_version')} (bicep): resource declarations in infra/: {declared_resources}, "
        f"checkov resource_count: {summary['resource_count']}"
    )
    print(
        f"  passed: {summary['passed']}, failed: {summary['failed']}, skipped: {summary['skipped']}, "
        f"parsing errors: {summary['parsing_errors']}"
    )
    for check in failed:
        problems.append(
            f"checkov FAILED {check['check_id']} ({check['check_name']}) on {check['resource']} "
            f"in {check['file_path']}:{check['file_line_range']}"
        )
    if summary["parsing_errors"]:
        problems.append(f"checkov could not parse {summary['parsing_errors']} file(s)")

    declared = declared_skips()
    used: set[tuple[str, str]] = set()
    if skipped:
        print("  skipped (reason from the inline comment):")
    for check in skipped:
        file = str(check["file_path"]).lstrip("/")
        reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()  # checked below
        used.add((file, check["check_id"]))
        print(f"    {check['check_id']:<14} {check['resource']:<58} {reason}")
    for (file, check_id), reason in sorted(declared.items()):
        if not reason:
            problems.append(f"skip of {check_id} in infra/{file} has no reason")
        if (file, check_id) not in used:
            problems.append(f"stale skip: {check_id} in infra/{file} matches no finding; remove it")

    print(f"\ninfra-check: {time.monotonic() - started:.1f} s")
    if problems:
        print("infra-check FAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("infra-check passed: every Bicep file parses, 0 checkov failures, every skip has a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
