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
renders this page with `python -m tests.reliability_report FILE --keep docs/reliability.md`.
Do not edit the tables by hand; what follows the line `<!-- kept -->` at the end (notes written
by hand, the chaos soak's table) is carried over from the page as it was.
"""

#: The line after which the page's hand-written part starts; ``render`` carries it over unchanged.
KEEP_MARKER = "<!-- kept -->"


def kept(page: str) -> str:
    """The part of an existing page from :data:`KEEP_MARKER` on ("" when it has none)."""
    at = page.find("\n" + KEEP_MARKER + "\n")  # a line of its own (the intro names it in backticks)
    return "" if at < 0 else page[at + 1:]


def render(path: str, keep: str = "") -> str:
    """The page for the rows in ``path``, then ``keep`` (see :func:`kept`)."""
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
    return "\n".join(out) + ("\n" + keep.rstrip("\n") + "\n" if keep else "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")


if __name__ == "__main__":
    page = sys.argv[3] if len(sys.argv) == 4 and sys.argv[2] == "--keep" else None
    print(render(sys.argv[1], kept(open(page).read()) if page and os.path.exists(page) else ""), end="")
