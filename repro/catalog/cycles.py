"""Cycles in the `needs` graph (a recipe needing itself, or a stage it is itself needed by).

Why in the catalog: a cycle made `repro run` recurse until RecursionError (24-40 s in), while `show`
and `plan` refused it; the loader now keeps every recipe on a cycle aside as broken, so each command
(and `repro lint`) gets the same one line.
"""

from __future__ import annotations


def cycles(edges: dict[str, list[str]]) -> dict[str, list[str]]:
    """node -> one cycle through it (the path, first node repeated at the end), for every node on a
    cycle; edges to unknown nodes are ignored."""
    found: dict[str, list[str]] = {}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                for member in loop[:-1]:
                    found.setdefault(member, loop[loop.index(member):] + loop[1:loop.index(member) + 1])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found
