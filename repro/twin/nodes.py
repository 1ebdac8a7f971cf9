"""Multi-node twins: the plan's per-node launcher commands run as node groups, all on this host over
loopback (each group its own launcher with its node rank, one shared main address and port), or one
group per Slurm node (`repro run --node-rank R --main-addr HOST`, what `repro submit --scale twin`
starts). Either way the curve must equal the single-node twin of the same effective batch: the
golden check of the verdict compares them.

Node groups share the run folder (a cluster shares its file system): rank 0's trainer writes
metrics.jsonl; each group logs to its own file (train.log for node 0, train-node<R>.log for the rest).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from repro.catalog.schema import Recipe
from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, ReproError
from repro.twin import launch
from repro.twin import runner as twin
from repro.twin.command import LOOPBACK, NodeGroup, free_port


def log_name(rank: int) -> str:
    return "train.log" if rank == 0 else f"train-node{rank}.log"


def groups(nodes: int, addr: str = LOOPBACK, port: int | None = None, rdzv_id: str = "repro-twin") -> list[NodeGroup]:
    """Every node group of an M-node twin; one port for all of them (picked here when not given)."""
    if nodes < 1:
        raise ReproError(f"--nodes must be at least 1, got {nodes}")
    port = port or free_port()
    return [NodeGroup(nodes, r, addr, port, rdzv_id) for r in range(nodes)]


def prepare(recipe: Recipe, out: Path, node_groups: list[NodeGroup], sets: list[str] | None = None,
            fresh: bool = False, extra: list | None = None, upstreams: list | None = None) -> list[twin.TwinRun]:
    """One TwinRun per node group (node 0 owns the folder's settings and resume decision)."""
    return [twin.prepare(recipe, out, sets, extra=extra, fresh=fresh, node=g, upstreams=upstreams)
            for g in node_groups]


def execute(runs: list[twin.TwinRun], echo: bool = True) -> twin.TwinResult | None:
    """Start every group at once (their launchers rendezvous with each other), stream each log on its
    own thread (a full pipe would stall a rank inside a collective), wait for all; node 0's run
    carries the records (None for a process that runs no node 0: its verdict is node 0's)."""
    t0 = time.perf_counter()
    with launch.supervised():
        started = [(r, launch.start(r.argv, r.env, r.out_dir / log_name(r.node.rank), cwd=r.cwd)) for r in runs]
        codes: dict[int, int] = {}

        def pump(run, launched):
            codes[run.node.rank] = launch.stream(launched, echo and run.node.rank == 0)

        threads = [threading.Thread(target=pump, args=item, daemon=True) for item in started]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # join with a timeout: Ctrl-C must reach the main thread
                t.join(0.5)
    wall = time.perf_counter() - t0
    failed = [r for r in runs if codes[r.node.rank] != 0]
    if failed:
        r = failed[0]
        path = r.out_dir / log_name(r.node.rank)
        last = launch.last_error_line(path)
        rc = codes[r.node.rank]
        code = EXIT_BAD_INPUT if rc == EXIT_BAD_INPUT else EXIT_FAILED
        raise ReproError(f"{r.recipe.id}: node group {r.node.rank} of {r.node.nodes} exited {rc}; "
                         f"see {path}" + (f" ({last[:300]})" if last else ""), code)
    head = runs[0]
    return twin.finished(head, 0, wall, head.out_dir / log_name(0)) if head.node.rank == 0 else None
