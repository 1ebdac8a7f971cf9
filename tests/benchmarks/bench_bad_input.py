"""Newcomer battery: >= 500 generated bad inputs through `repro` in one process; prints the counts.

Command lines over the whole argument space (tests/badinput.py: ids, numbers, hosts, --set words,
--out that is a file, formats, GPUs) plus parse/verify of mutated logs. Contract: tracebacks 0,
internal errors 0, every exit-2 error one line. Nothing trains: see tests/badinput.py.

    python tests/benchmarks/bench_bad_input.py [N] [SEED]     (default 600 cases, seed 15)
"""

from __future__ import annotations

import collections
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1]))

from badinput import argv_for, mutate_text, outcome, sample_logs  # noqa: E402


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 15)
    codes: collections.Counter = collections.Counter()
    broken: list[tuple[list[str], list[str]]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="repro-bad-input-") as tmp:
        root = Path(tmp)
        files = {"a_file": root / "a_file"}
        files["a_file"].write_text("not a folder\n")
        for i, (name, text) in enumerate(sample_logs().items()):
            files[f"log{i}"] = root / name
            files[f"log{i}"].write_text(text)
        for case in range(n):
            if case % 3 == 2:  # every third case: a freshly mutated log through parse or verify
                name, text = rng.choice(sorted(sample_logs().items()))
                path = root / f"case{case}-{name}"
                path.write_bytes(mutate_text(rng, text))
                argv = ["parse", str(path)] if rng.random() < 0.5 else ["verify", "tulu3-8b-sft", str(path)]
            else:
                argv = argv_for(rng, files)
            result = outcome(argv)
            codes["traceback" if result.exception is not None else result.code] += 1
            problems = result.problems()
            if problems:
                broken.append((argv, problems))
    wall = time.perf_counter() - t0
    tracebacks = codes.pop("traceback", 0)
    print(f"bad-input battery: {n} cases in {wall:.1f} s")
    print(f"  exit 0: {codes.get(0, 0)}  exit 1: {codes.get(1, 0)}  exit 2: {codes.get(2, 0)}  "
          f"other exit codes: {sum(v for k, v in codes.items() if k not in (0, 1, 2))}")
    print(f"  tracebacks: {tracebacks}")
    print(f"  contract violations (traceback, internal error, multi-line error, odd exit): {len(broken)}")
    for argv, problems in broken[:20]:
        print(f"    {argv!r}: {'; '.join(problems)}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
