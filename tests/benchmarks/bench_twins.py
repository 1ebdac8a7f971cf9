"""Wall time of each twin and of the equivalence check on this machine (targets on the 2-core CI
machine: at most 30 s per twin and 60 s for the equivalence check, after the one-time asset build).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro import catalog, twin  # noqa: E402
from repro.twin.equivalence import run_equivalence  # noqa: E402


def main() -> None:
    t0 = time.perf_counter()
    twin.build_assets()
    print(f"bench_twins: asset build (cached after the first time): {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in (r for r in catalog.load_all().values() if r.twin):
            t0 = time.perf_counter()
            run = twin.execute(twin.prepare(recipe, Path(tmp) / recipe.id), echo=False)
            wall = time.perf_counter() - t0
            print(f"bench_twins: {recipe.id}: {wall:.1f} s wall, {len(run.records)} steps "
                  f"({run.geometry.processes} processes); target <= 30 s: {'met' if wall <= 30 else 'MISSED'}")
        recipe = catalog.get("tulu3-8b-sft")
        result = run_equivalence(recipe, Path(tmp) / "equivalence")
        print(f"bench_twins: equivalence {recipe.id}: {result['wall_s']:.1f} s wall for {len(result['layouts'])} "
              f"layouts; target <= 60 s: {'met' if result['wall_s'] <= 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
