"""Maximum flow over a small directed capacity graph (Edmonds-Karp).

The testbed's mesh has at most 16 nodes, so a breadth-first augmenting-path search is plenty and
saves a dependency.
"""

from __future__ import annotations

from collections import deque


def max_flow(capacity: dict[tuple[str, str], float], src: str, dst: str) -> float:
    """The maximum flow from ``src`` to ``dst``; ``capacity[(a, b)]`` is the a -> b capacity."""
    if src == dst:
        raise ValueError("source and sink are the same node")
    residual: dict[str, dict[str, float]] = {}
    for (a, b), cap in capacity.items():
        residual.setdefault(a, {}).setdefault(b, 0.0)
        residual.setdefault(b, {}).setdefault(a, 0.0)
        residual[a][b] += cap
    total = 0.0
    while True:
        parent = {src: src}
        queue = deque([src])
        while queue and dst not in parent:
            node = queue.popleft()
            for nxt, cap in residual.get(node, {}).items():
                if cap > 1e-12 and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if dst not in parent:
            return total
        path, node = [], dst
        while node != src:
            path.append((parent[node], node))
            node = parent[node]
        push = min(residual[a][b] for a, b in path)
        for a, b in path:
            residual[a][b] -= push
            residual[b][a] += push
        total += push
