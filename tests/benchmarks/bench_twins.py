"""Wall time of each twin and of the equivalence check on this machine (targets on the 2-core CI
machine: at most 30 s per twin and 60 s for the equivalence check, after the one-time asset build).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro.catalog import loader as catalog  # noqa: E402
from repro.twin import assets  # noqa: E402
from repro.twin.session import equivalence as run_equivalence  # noqa: E402
from repro.twin.session import run_twin  # noqa: E402


def main() -> None:
    twins = [r for r in catalog.load_all().values() if r.twin]
    t0 = time.perf_counter()
    for recipe in twins:
        assets.build(recipe)
    print(f"bench_twins: asset builds (cached after the first time): {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in twins:
            # the CLI's path: a chained stage builds (or reuses) its upstream first; the time includes that
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the figures only; each run's report is in its folder
                outcome = run_twin(recipe, Path(tmp) / recipe.id, [], quiet=True)
                code = 0 if outcome is not None and outcome.passed else 1
            wall, target = time.perf_counter() - t0, recipe.twin.budget_s
            print(f"bench_twins: {recipe.id}: {wall:.1f} s wall, verdict {'PASS' if code == 0 else 'FAIL'} "
                  f"({recipe.twin.geometry.processes} processes); target <= {target:g} s: "
                  f"{'met' if wall <= target else 'MISSED'}", flush=True)
        for recipe in (r for r in twins if r.twin.equivalence):
            result = run_equivalence(recipe, Path(tmp) / f"equivalence-{recipe.id}")
            target = 2 * recipe.twin.budget_s
            print(f"bench_twins: equivalence {recipe.id}: {result['wall_s']:.1f} s wall for "
                  f"{len(result['layouts'])} layouts; target <= {target:g} s: "
                  f"{'met' if result['wall_s'] <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
