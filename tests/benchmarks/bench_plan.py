"""Time to plan every recipe for every GPU count from 1 to 64 (target: under 1 s in total).

Planning includes the exact solve, the nearest-alternative search on refusals and rendering the
commands and config files, i.e. what `repro plan` does minus printing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro import catalog  # noqa: E402
from repro.plan import rescale  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.plan.planner import make_plan  # noqa: E402


def main() -> None:
    recipes = list(catalog.load_all().values())  # loading is not what we measure
    t0 = time.perf_counter()
    planned = refused = 0
    for recipe in recipes:
        for gpus in range(1, 65):
            try:
                make_plan(recipe, rescale.Request(gpus))
                planned += 1
            except ReproError:
                refused += 1
    dt = time.perf_counter() - t0
    print(f"bench_plan: {len(recipes)} recipes x 64 GPU counts = {planned + refused} requests "
          f"({planned} plans, {refused} refusals with alternatives) in {dt:.3f} s "
          f"({1e3 * dt / (planned + refused):.2f} ms each); target < 1 s: {'met' if dt < 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
