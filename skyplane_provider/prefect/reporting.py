"""How a transfer reports in Prefect: the run logger and three artifacts.

- ``<key>-progress``: a progress artifact created when the task starts, updated while bytes move;
- ``<key>-stats``: a table of the final figures (objects, bytes, seconds, Gbps, cost...);
- ``<key>-plan``: markdown with the route, the gateways, and predicted vs. actual throughput and cost.

Outside a flow or task run (the task's ``.fn`` called plainly) it logs through ``logging`` and creates
no artifacts. An artifact that cannot be written is logged and skipped: reporting never fails a transfer.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

from planner.errors import BadOptionError
from planner.plan import Plan
from skyplane_provider.transfer import DryRun, Progress
from skyplane_provider.transfer.stats import human_bytes

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

#: The stats shown in the table artifact, in this order (nested ones go to the plan artifact).
TABLE_FIGURES = ("job_id", "src", "dsts", "objects", "skipped_objects", "bytes", "bytes_on_wire", "chunks",
                 "seconds", "gbps", "move_gbps", "verified", "retries", "gateways_replaced", "egress_usd_predicted",
                 "egress_usd_actual", "vm_usd", "cost_usd", "provisioner")


def check_artifact_key(key: str) -> str:
    """Artifact keys are lowercase letters, digits and single dashes (Prefect's rule plus ours)."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or len(key) > 50:
        raise BadOptionError(f"artifact key {key!r} is not usable",
                             hint="use lowercase letters, digits and dashes, at most 50 characters, "
                                  "e.g. nightly-events")
    return key


def stats_table(stats: dict) -> list[dict[str, Any]]:
    """One row per figure: ``[{"figure": "bytes", "value": 123}, ...]``."""
    rows = []
    for name in TABLE_FIGURES:
        value = stats.get(name)
        rows.append({"figure": name, "value": ", ".join(value) if isinstance(value, list) else value})
    rows.append({"figure": "solver", "value": stats.get("plan", {}).get("solver")})
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def plan_markdown(src: str, dsts: list[str], plan: Plan, size_bytes: int, *, stats: dict | None = None,
                  error: str | None = None, sync: bool = False) -> str:
    """The plan artifact: route, gateways, predicted vs. actual figures (actual ones once known)."""
    arrow = "sync" if sync else "copy"
    lines = [f"# Skyplane {arrow}: `{src}` → " + ", ".join(f"`{d}`" for d in dsts), ""]
    if stats is not None:
        lines += [f"**Verified** ({stats['verification']})." if stats.get("verified") else "**Not verified.**", ""]
    if error is not None:
        lines += [f"**Did not finish:** {error}", ""]
    lines += [f"Solver `{plan.solver}`, regions {plan.src} → {', '.join(plan.dsts)}; "
              f"{human_bytes(size_bytes)} planned.", "", "## Route", "",
              "| from | to | planned Gbps | connections |", "|---|---|---:|---:|"]
    lines += [f"| {e.src} | {e.dst} | {_num(e.gbps, '.3f')} | {e.connections} |" for e in plan.edges]
    lines += ["", "## Gateways", "", "| region | gateways |", "|---|---:|"]
    lines += [f"| {r} | {plan.gateways[r]} |" for r in plan.regions]
    predicted_s = plan.predicted_seconds(size_bytes) if plan.throughput_gbps > 0 else None
    actual = stats or {}
    lines += ["", "## Predicted vs. actual", "", "| | predicted | actual |", "|---|---:|---:|",
              f"| throughput (Gbps) | {_num(plan.throughput_gbps or None, '.3f')} | "
              f"{_num(actual.get('gbps'), '.4f')} |",
              f"| duration (s) | {_num(predicted_s, '.1f')} | {_num(actual.get('seconds'), '.1f')} |",
              f"| egress (USD) | {_num(plan.egress_usd(size_bytes), '.6f')} | "
              f"{_num(actual.get('egress_usd_actual'), '.6f')} |",
              f"| gateway VMs (USD) | {_num(plan.vm_usd(predicted_s) if predicted_s else 0.0, '.6f')} | "
              f"{_num(actual.get('vm_usd'), '.6f')} |",
              f"| total (USD) | {_num(plan.cost_usd(size_bytes, predicted_s or 0.0), '.6f')} | "
              f"{_num(actual.get('cost_usd'), '.6f')} |"]
    if stats is not None:
        wire = stats.get("bytes_on_wire", 0)
        ratio = f" ({wire / stats['bytes']:.2f} of the data)" if stats.get("bytes") else ""
        lines += ["", f"{stats['objects']} objects, {human_bytes(stats['bytes'])} moved, "
                      f"{human_bytes(wire)} on the wire{ratio}, {stats['skipped_objects']} already up to date, "
                      f"{stats['retries']} chunk retries."]
    return "\n".join(lines) + "\n"


class RunReport:
    """The voice of one transfer in Prefect (see the module doc)."""

    def __init__(self, artifact_key: str) -> None:
        self.key = check_artifact_key(artifact_key)
        self.in_run = TaskRunContext.get() is not None or FlowRunContext.get() is not None
        self.logger = get_run_logger() if self.in_run else log
        self._progress_id = None
        self._last_percent = 0.0

    def _artifact(self, what: str, create: Callable[..., Any], *args, **kwargs) -> Any:
        if not self.in_run:
            return None
        try:
            return create(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - an unreachable API must not fail the transfer
            self.logger.warning("could not write the %s artifact: %s", what, exc)
            return None

    def started(self, src: str, dsts: list[str], attempt: int, sync: bool) -> None:
        how = "sync" if sync else "copy"
        resumed = " (retry: resuming as a sync)" if attempt > 1 else ""
        self.logger.info("skyplane %s %s -> %s, attempt %d%s", how, src, ", ".join(dsts), attempt, resumed)
        self._progress_id = self._artifact("progress", create_progress_artifact, 0.0, key=f"{self.key}-progress",
                                           description=f"Listing and planning {src} → {', '.join(dsts)}")

    def planned(self, plan: Plan, objects: int, size_bytes: int, skipped: int) -> None:
        self.logger.info("%d objects (%s) to move, %d up to date; plan %s", objects, human_bytes(size_bytes),
                         skipped, plan.summary())
        self._update(0.0, f"Moving {objects} objects ({human_bytes(size_bytes)}) over {len(plan.edges)} route edges")

    def progress(self, p: Progress) -> None:
        self.logger.info("%s", p.line())
        self._update(100.0 * p.fraction, None)

    def finished(self, stats: dict, markdown: str) -> None:
        self.logger.info("done: %d objects, %s in %.1f s (%.3f Gbps), verified=%s, cost $%.4f",
                         stats["objects"], human_bytes(stats["bytes"]), stats["seconds"], stats["gbps"],
                         stats["verified"], stats["cost_usd"])
        self._update(100.0, "Done, verified" if stats.get("verified") else "Done")
        self._artifact("stats", create_table_artifact, stats_table(stats), key=f"{self.key}-stats",
                       description=f"Skyplane transfer {stats['job_id']}")
        self._artifact("plan", create_markdown_artifact, markdown, key=f"{self.key}-plan",
                       description=f"Route and cost of transfer {stats['job_id']}")

    def dry_run(self, dry: DryRun) -> dict:
        """A dry run: every object it would copy (and delete) in the log, its summary as the ``<key>-plan``
        artifact; returns the summary dict (the task's result)."""
        for line in dry.lines():
            self.logger.info("%s", line)
        self._update(100.0, "Dry run: nothing moved")
        self._artifact("plan", create_markdown_artifact, "# Skyplane dry run\n\n" + "\n\n".join(dry.summary()) + "\n",
                       key=f"{self.key}-plan", description=f"What transfer {dry.job_id} would do")
        return dry.to_dict()

    def failed(self, exc: BaseException, markdown: str | None) -> None:
        if isinstance(exc, Exception):
            self.logger.error("transfer failed: %s: %s", type(exc).__name__, exc)
            self._update(None, f"Failed: {type(exc).__name__}")
        else:  # a timeout, a cancellation, SIGTERM or Ctrl-C reached the task
            self.logger.error("transfer stopped by %s (timeout or cancellation); fleet torn down", type(exc).__name__)
            self._update(None, f"Stopped by {type(exc).__name__}")
        if markdown is not None:
            self._artifact("plan", create_markdown_artifact, markdown, key=f"{self.key}-plan",
                           description="Route of the transfer that did not finish")

    def _update(self, percent: float | None, description: str | None) -> None:
        if self._progress_id is None:
            return
        if percent is None:  # only the description changes; keep the last figure
            percent = self._last_percent
        self._last_percent = percent
        self._artifact("progress", update_progress_artifact, self._progress_id, percent, description=description)
