"""Cheapest trees for one source and several destinations: ``mst`` and ``steiner``.

Both minimise egress USD/GB (ties go to the faster links) and carry the data on one tree:

- ``mst``: the minimum-cost spanning arborescence rooted at the source over the source and the
  destinations only (Edmonds' algorithm, networkx). The star of ``direct`` is one such tree, so
  ``mst`` never costs more.
- ``steiner``: may also relay through regions that are not destinations: the arborescence over the
  terminals' shortest-path metric closure, expanded into its paths, re-spanned and pruned of
  relay leaves (the classic 2-approximation, directed). It never costs more than ``mst``, because
  every direct terminal link stays a candidate. Relay links slower than the rate of the direct star
  (one gateway per region) are left out, so a cheap but crawling detour is never taken.

For one destination, ``mst`` is the direct link and ``steiner`` the cheapest path.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.errors import InfeasiblePlanError
from planner.grid import Grid
from planner.model import tree_plan, tree_rate
from planner.paths import prune_leaves
from planner.plan import Plan

#: Tie-break weight per 1/Gbps: far below the price grid's 0.0001 USD steps over a handful of edges.
_TIE = 1e-8

Tree = list[tuple[str, str]]


def mst(grid: Grid, src: str, dsts: Sequence[str], *, max_gateways: int, throughput_gbps: float | None,
        started: float) -> Plan:
    terminals = _terminals(src, dsts)
    tree = _mst_tree(grid, src, terminals)
    tree = _cheaper(grid, tree, [(src, d) for d in terminals[1:]] if _star_exists(grid, src, terminals) else None)
    return tree_plan(grid, src, dsts, tree, solver="mst", max_gateways=max_gateways,
                     throughput_gbps=throughput_gbps, started=started)


def steiner(grid: Grid, src: str, dsts: Sequence[str], *, max_gateways: int, throughput_gbps: float | None,
            started: float) -> Plan:
    import networkx as nx

    terminals = _terminals(src, dsts)
    star = [(src, d) for d in terminals[1:]]
    floor = tree_rate(grid, star, dict.fromkeys(terminals, 1))[0] if _star_exists(grid, src, terminals) else 0.0
    g = nx.DiGraph()
    for a in grid.regions:
        for b, link in grid.successors(a).items():
            relayed = a not in terminals or b not in terminals
            if b != src and not (relayed and link.gbps < floor):
                g.add_edge(a, b, weight=_weight(link.cost_per_gb, link.gbps))
    closure = nx.DiGraph()
    closure.add_nodes_from(terminals)
    paths: dict[tuple[str, str], list[str]] = {}
    for a in terminals:
        if a not in g:
            continue
        _, found = nx.single_source_dijkstra(g, a, weight="weight")
        for b in terminals:
            if b != a and b != src and b in found:
                paths[(a, b)] = found[b]
                closure.add_edge(a, b, weight=_path_weight(grid, found[b]))
    expanded = nx.DiGraph()
    for a, b in _arborescence(closure, terminals):
        nx.add_path(expanded, paths[(a, b)])
    for a, b in expanded.edges:
        link = grid.link(a, b)
        expanded[a][b]["weight"] = _weight(link.cost_per_gb, link.gbps)
    spanned = [src, *(r for r in expanded.nodes if r != src)]
    tree = prune_leaves(_arborescence(expanded, spanned), set(terminals))
    tree = _cheaper(grid, tree, _mst_tree(grid, src, terminals) if len(terminals) > 1 else None)
    tree = _adopt_relays(grid, tree, src, set(terminals), floor)
    relays = sorted({r for e in tree for r in e} - set(terminals))
    return tree_plan(grid, src, dsts, tree, solver="steiner", max_gateways=max_gateways,
                     throughput_gbps=throughput_gbps, started=started,
                     notes=[f"relays: {', '.join(relays)}"] if relays else [])


def _adopt_relays(grid: Grid, tree: Tree, src: str, terminals: set[str], floor: float) -> Tree:
    """Greedy star insertion: while some region r, joined under its cheapest parent in the tree (or
    where it already is), can adopt tree nodes for less than their current in-edges, apply the best
    such r. The metric closure misses relays that pay off only when shared, such as one paid hop
    into a free-egress store that then fans out to every destination. Relay links below ``floor``
    Gbps are not taken, as in the closure."""
    def usable(a: str, b: str) -> bool:
        return grid.link(a, b) is not None and (a in terminals and b in terminals or grid.gbps(a, b) >= floor)

    while True:
        parent = {b: a for a, b in tree}
        best: tuple[float, str, str | None, list[str]] | None = None
        for r in grid.regions:
            joins = None
            if r != src and r not in parent:
                joins = min(((grid.cost(p, r), p) for p in {src, *parent} if usable(p, r)), default=(0, None))[1]
                if joins is None:
                    continue
            ancestors, node = {r}, parent.get(r, joins)
            while node is not None:
                ancestors.add(node)
                node = parent.get(node)
            adopted = [t for t in parent if t not in ancestors and usable(r, t)
                       and grid.cost(r, t) < grid.cost(parent[t], t) - 1e-12]
            gain = sum(grid.cost(parent[t], t) - grid.cost(r, t) for t in adopted)
            gain -= grid.cost(joins, r) if joins is not None else 0.0
            if adopted and gain > 1e-12 and (best is None or gain > best[0]):
                best = (gain, r, joins, adopted)
        if best is None:
            return tree
        _, r, joins, adopted = best
        tree = [(a, b) for a, b in tree if b not in adopted] + [(r, t) for t in adopted]
        if joins is not None:
            tree.append((joins, r))
        tree = prune_leaves(sorted(tree), terminals)


def tree_cost(grid: Grid, tree: Tree) -> float:
    return sum(grid.cost(a, b) for a, b in tree)


def _terminals(src: str, dsts: Sequence[str]) -> list[str]:
    return [src, *dict.fromkeys(d for d in dsts if d != src)]


def _weight(cost: float, gbps: float) -> float:
    return cost + _TIE / gbps


def _path_weight(grid: Grid, path: list[str]) -> float:
    return sum(_weight(grid.cost(a, b), grid.gbps(a, b)) for a, b in zip(path, path[1:]))


def _star_exists(grid: Grid, src: str, terminals: list[str]) -> bool:
    return all(grid.link(src, d) for d in terminals[1:])


def _mst_tree(grid: Grid, src: str, terminals: list[str]) -> Tree:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(terminals)
    for a in terminals:
        for b in terminals:
            link = grid.link(a, b) if a != b and b != src else None
            if link:
                g.add_edge(a, b, weight=_weight(link.cost_per_gb, link.gbps))
    return _arborescence(g, terminals)


def _arborescence(g, nodes: list[str]) -> Tree:
    """Minimum-weight spanning arborescence of ``g`` (rooted at ``nodes[0]``, which has no in-edges)."""
    import networkx as nx

    if len(nodes) < 2:
        return []
    try:
        tree = nx.minimum_spanning_arborescence(g, attr="weight", preserve_attrs=False)
    except nx.NetworkXException as exc:
        raise InfeasiblePlanError(f"the grid cannot reach every destination from {nodes[0]}: {exc}",
                                  hint="check the grid's links, or use --solver ilp") from None
    return sorted(tree.edges)


def _cheaper(grid: Grid, tree: Tree, fallback: Tree | None) -> Tree:
    """``tree``, unless ``fallback`` costs strictly less (tie-break weights on unusual grids)."""
    if fallback is not None and tree_cost(grid, fallback) < tree_cost(grid, tree) - 1e-12:
        return fallback
    return tree
