"""Shortest paths and flow decomposition on small region graphs."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

EPS = 1e-6


def decompose(flows: dict[tuple[str, str], float], src: str, dst: str) -> list[tuple[float, list[tuple[str, str]]]]:
    """Split an src -> dst edge flow into paths: (flow, edges) pairs, largest first.

    Flow on cycles that carry nothing from src to dst is left out.
    """
    residual = {e: f for e, f in flows.items() if f > EPS}
    paths: list[tuple[float, list[tuple[str, str]]]] = []
    while True:
        path = _find_path(residual, src, dst)
        if path is None:
            break
        push = min(residual[e] for e in path)
        for e in path:
            residual[e] -= push
            if residual[e] <= EPS:
                del residual[e]
        paths.append((push, path))
    return sorted(paths, key=lambda p: -p[0])


def _find_path(residual: dict[tuple[str, str], float], src: str, dst: str) -> list[tuple[str, str]] | None:
    """A simple src -> dst path over edges with flow left, preferring wide edges first."""
    out: dict[str, list[tuple[float, str]]] = {}
    for (a, b), f in residual.items():
        out.setdefault(a, []).append((f, b))
    parent: dict[str, str] = {}
    stack, seen = [src], {src}
    while stack:
        node = stack.pop()
        if node == dst:
            path, n = [], dst
            while n != src:
                path.append((parent[n], n))
                n = parent[n]
            return path[::-1]
        for _, nxt in sorted(out.get(node, ())):
            if nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                stack.append(nxt)
    return None


def cheapest_paths(src: str, nodes: Iterable[str],
                   weight: Callable[[str, str], float | None]) -> dict[str, tuple[float, list[str]]]:
    """Dijkstra from ``src``: node -> (total weight, node path). ``weight(a, b)`` None = no edge."""
    nodes = list(nodes)
    best: dict[str, tuple[float, list[str]]] = {}
    heap: list[tuple[float, int, str, list[str]]] = [(0.0, 0, src, [src])]
    tie = 0
    while heap:
        d, _, node, path = heapq.heappop(heap)
        if node in best:
            continue
        best[node] = (d, path)
        for nxt in nodes:
            if nxt in best or nxt == node:
                continue
            w = weight(node, nxt)
            if w is not None:
                tie += 1
                heapq.heappush(heap, (d + w, tie, nxt, path + [nxt]))
    return best


def prune_leaves(tree: Iterable[tuple[str, str]], keep: set[str]) -> list[tuple[str, str]]:
    """Drop edges into leaves outside ``keep`` until every leaf is kept (relays that lead nowhere)."""
    tree = list(tree)
    while True:
        parents = {a for a, _ in tree}
        leaves = {(a, b) for a, b in tree if b not in parents and b not in keep}
        if not leaves:
            return tree
        tree = [e for e in tree if e not in leaves]
