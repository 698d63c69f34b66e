"""Collects what the fault and bad-input tests tried and what happened, for docs/reliability.md.

Set ``SKYPLANE_RELIABILITY_REPORT=FILE`` (``make reliability-report`` does) and every ``record()`` call
appends one JSON line to FILE; ``python -m tests.reliability_report FILE`` renders the Markdown table.
Without the variable, ``record()`` does nothing, so ordinary test runs write no files.
"""

from __future__ import annotations

import json
import os
import sys


def record(kind: str, what: str, outcome: str) -> None:
    path = os.environ.get("SKYPLANE_RELIABILITY_REPORT")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"kind": kind, "what": what, "outcome": outcome}) + "\n")


INTRO = """\
What the project's fault, fuzz and bad-input tests did to a running system, and what it did in
return. Each row is one test's own account, measured while it ran: what was broken or sent
(a frame damaged on the wire, a gateway killed, a store throttling, a malformed request, a
fuzzer's inputs) and the observed outcome (errors raised, retries, counters, timings, whether the
copy came out sha256-identical). The tests assert these outcomes; the table only reports them,
so a row is here only if its test ran, and the numbers are from that run on that machine.

Regenerate with `make reliability-report`: it runs
`pytest tests -k "fault or fuzz or bad_input"` with `SKYPLANE_RELIABILITY_REPORT` pointing at a
scratch file (each `tests.reliability_report.record(kind, what, outcome)` appends a row) and
renders this page with `python -m tests.reliability_report FILE`. Do not edit it by hand.
"""


def render(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    counts = ", ".join(f"{sum(r['kind'] == k for r in rows)} {k.replace('_', ' ')}" for k in ("fault", "fuzz",
                                                                                                "bad_input"))
    out = ["# Reliability: faults and bad inputs tried, and what happened", "", INTRO,
           f"This run: {len(rows)} rows ({counts}).", ""]
    for kind, title in (("fault", "Faults"), ("fuzz", "Fuzzing"), ("bad_input", "Bad inputs")):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        out += [f"## {title}", "", "| what was tried | what happened |", "|---|---|"]
        out += [f"| {_cell(r['what'])} | {_cell(r['outcome'])} |" for r in mine]
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")


if __name__ == "__main__":
    print(render(sys.argv[1]))
