"""A picture of a Plan: regions as labelled nodes laid out by hop count, edges labelled with Gbps and $/GB."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from planner.plan import Plan

_COLOURS = {"src": "#4c72b0", "dst": "#55a868", "relay": "#dd8452"}


def layout(plan: Plan) -> dict[str, tuple[float, float]]:
    """x = hops from the source (the longest route when the edges have no cycle, else the shortest),
    y = spread within a column."""
    hops = _longest_hops(plan) or _shortest_hops(plan)
    for region in plan.regions:
        hops.setdefault(region, 1)
    columns: dict[int, list[str]] = {}
    for region in plan.regions:
        columns.setdefault(hops[region], []).append(region)
    pos = {}
    for x, regions in columns.items():
        for i, region in enumerate(sorted(regions)):
            # Zigzag within a column so that edges between its regions do not run through a third one.
            shift = 0.0 if len(regions) < 3 else (0.22 if i % 2 else -0.22)
            pos[region] = (x + shift, (len(regions) - 1) / 2 - i)
    return pos


def _shortest_hops(plan: Plan) -> dict[str, int]:
    hops = {plan.src: 0}
    queue = deque([plan.src])
    while queue:
        a = queue.popleft()
        for e in plan.edges:
            if e.src == a and e.dst not in hops:
                hops[e.dst] = hops[a] + 1
                queue.append(e.dst)
    return hops


def _longest_hops(plan: Plan) -> dict[str, int] | None:
    """Longest-path layers in topological order (Kahn); None when the edges form a cycle."""
    indegree = {r: 0 for r in plan.regions}
    for e in plan.edges:
        indegree[e.dst] += 1
    hops = {r: 0 for r, d in indegree.items() if d == 0}
    queue = deque(hops)
    seen = 0
    while queue:
        a = queue.popleft()
        seen += 1
        for e in plan.edges:
            if e.src == a:
                hops[e.dst] = max(hops.get(e.dst, 0), hops[a] + 1)
                indegree[e.dst] -= 1
                if indegree[e.dst] == 0:
                    queue.append(e.dst)
    return hops if seen == len(indegree) else None


def draw_plan(plan: Plan, path_png: str | Path) -> Path:
    """Write a PNG of ``plan`` to ``path_png`` (matplotlib, Agg backend) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    pos = layout(plan)
    width = round(max(x for x, _ in pos.values())) + 1
    height = max(round(2 * abs(y)) + 1 for _, y in pos.values())
    fig, ax = plt.subplots(figsize=(4.2 * width + 2, 1.6 * height + 2))
    boxes = {}
    for region, (x, y) in pos.items():
        kind = "src" if region == plan.src else ("dst" if region in plan.dsts else "relay")
        label = ax.text(x, y, f"{region}\n{plan.gateways.get(region, 0)} gateway(s)", fontsize=8.5, ha="center",
                        va="center", color="white", fontweight="bold", zorder=5,
                        bbox=dict(boxstyle="round,pad=0.4", fc=_COLOURS[kind], ec="none"))
        boxes[region] = label.get_bbox_patch()
    ax.set_xlim(-0.6, width - 0.35)
    ax.set_ylim(-height / 2 - 0.2, height / 2 + 0.2)
    ax.axis("off")
    ax.set_title(
        f"{plan.solver}: {plan.src} -> {len(plan.dsts)} destination(s), {plan.throughput_gbps:.2f} Gbps, "
        f"egress {_usd(plan.cost_per_gb)}/GB, VMs {_usd(plan.vm_cost_per_hour)}/h"
        + (f", {plan.partitions} partitions" if plan.partitions > 1 else ""), fontsize=10)
    handles = [plt.Line2D([], [], marker="s", ls="", color=c, label=k) for k, c in _COLOURS.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    fig.tight_layout()
    for e in plan.edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        # Bent arcs keep a -> b and b -> a apart; edges within a column or skipping one bend more to
        # clear the regions in between.
        rad = 0.12 if 0.5 <= abs(x1 - x2) <= 1.5 else 0.3
        ax.add_patch(FancyArrowPatch(
            (x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=16, color="#555555", zorder=2,
            lw=1.2 + 1.5 * e.gbps / max(plan.throughput_gbps, 1e-9), connectionstyle=f"arc3,rad={rad}",
            patchA=boxes[e.src], patchB=boxes[e.dst]))
        label = f"{e.gbps:.2f} Gbps, {_usd(e.cost_per_gb)}/GB\n{e.connections} conn"
        if plan.partitions > 1:
            label += f", p{','.join(str(p) for p in e.partitions)}"
        ax.text(*_arc_middle(ax, (x1, y1), (x2, y2), rad), label, fontsize=7.5, ha="center", va="center",
                zorder=4, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#cccccc", alpha=0.9))
    path = Path(path_png)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _usd(value: float) -> str:
    """Dollars, escaped: matplotlib reads a pair of ``$`` as maths."""
    return f"\\${value:.4g}"


def _arc_middle(ax, a: tuple[float, float], b: tuple[float, float], rad: float) -> tuple[float, float]:
    """The middle of matplotlib's ``arc3`` curve from a to b (a quadratic Bezier bent in display space)."""
    (x1, y1), (x2, y2) = ax.transData.transform([a, b])
    mx, my = (x1 + x2) / 2 + rad * (y2 - y1) / 2, (y1 + y2) / 2 - rad * (x2 - x1) / 2
    return tuple(ax.transData.inverted().transform((mx, my)))
