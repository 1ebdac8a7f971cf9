"""Parser throughput: one million generated log lines per format, timed end to end.

Run: ``python tests/benchmarks/bench_parse.py [--lines N] [--processes N] [--check]``. Not
collected by pytest (no ``test_`` prefix). Every generated line is a metric line, the worst
case: real logs have fewer (config dumps and warnings are skipped by the substring prefilter).
Targets (issue 22): structured formats (JSON lines) >= 1 M lines/s, stdout formats >= 0.5 M
lines/s; the figures are printed per format with the target, and the exit code is 1 when a
format misses it. Timing is never a pytest test (shared CI machines are too noisy).

A Fast-LLM log this size (670 MB) is parsed by all usable cores (``repro.verify.parsers._parallel``);
``--processes 1`` (``REPRO_PARSE_PROCESSES=1``) times one process alone, and ``--check`` also
parses each file in one process and fails unless records and issues are identical.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro.verify.parsers import parse_files



def open_instruct_line(step: int) -> str:
    return (f"11/20/2024 15:37:00 - INFO - __main__ -   Step: {step}, LR: {2e-5 * (1 - step / 2e6)}, "
            f"Loss: {0.5 + 1.0 / (1 + step * 1e-4)}, TPS: {12345.6 + step % 97}\n")


def fast_llm_line(step: int) -> str:
    samples = step * 128
    return (f"2025-04-01 17:18:22,486 [Rank 000] Training @ iteration {step:6d}/1000000 | "
            f"consumed samples: {samples:12,d} | consumed tokens: {samples * 8192:16,d} | batch size: 128 | "
            f"step time: {913.45 + step % 7:.2f} ms | throughput: 440.12 tflop/s (model) | "
            f"449.90 tflop/s (hardware) | 8960.00 tokens/s/gpu | Memory allocated 35,123.45 MiB | "
            f"max allocated 60,123.00 MiB | reserved 70,000.00 MiB | max reserved 71,000.00 MiB | "
            f"global max reserved 72,000.00 MiB | learning rate: {1e-4 * (1 - step / 2e6):.3e} | "
            f"loss scale:     1 | grad norm: {1.0 + (step % 13) / 100:.4f} | skipped iterations:   0 | "
            f"nan iterations:   0 | average step time 915.00 ms | remaining 5 days, 6:00:00  | "
            f"completion 2025-04-07 00:00:00 (0.00 %) | language model loss: {2.0 + 1.0 / step:.5f}\n")


def llamafactory_line(step: int) -> str:
    return (f'{{"current_steps": {step}, "total_steps": 2000000, "loss": {0.5 + 1.0 / (1 + step * 1e-4):.4f}, '
            f'"learning_rate": {2e-5 * (1 - step / 2e6)}, "epoch": {step / 1e6}, "percentage": {step / 2e4:.2f}, '
            f'"elapsed_time": "0:00:24", "remaining_time": "5:58:33", "throughput": "0.00", "total_tokens": 0}}\n')


def mllog_line(step: int) -> str:
    return (f':::MLLOG {{"namespace": "", "time_ms": {1715848320425 + step}, "event_type": "POINT_IN_TIME", '
            f'"key": "train_loss", "value": {2.0 + 1.0 / step:.5f}, "metadata": {{"file": "train.py", '
            f'"lineno": 1, "samples_count": {step * 8}}}}}\n')


def megatron_line(step: int) -> str:
    return (f" iteration {step:8d}/ 2000000 | consumed samples: {step * 64:12d} | elapsed time per iteration (ms): "
            f"{38390.3 + step % 7:.1f} | learning rate: {2e-5 * (1 - step / 2e6):.6E} | global batch size:    64 | "
            f"lm loss: {2.0 + 1.0 / step:.6E} | loss scale: 1.0 | grad norm: {1.0 + (step % 13) / 100:.3f} | "
            f"number of skipped iterations:   0 | number of nan iterations:   0 |\n")


GENERATORS = {"open_instruct_stdout": open_instruct_line, "fast_llm": fast_llm_line,
              "megatron_stdout": megatron_line, "llamafactory": llamafactory_line, "mllog": mllog_line}
#: lines per second each format must reach: JSON lines are "structured", the rest stdout
TARGET_LINES_PER_S = {"llamafactory": 1_000_000, "mllog": 1_000_000}
STDOUT_TARGET = 500_000


def write_log(path: Path, make_line, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines("".join(make_line(s) for s in range(start, min(start + 10_000, lines + 1)))
                      for start in range(1, lines + 1, 10_000))


def bench(fmt: str, lines: int, workdir: Path, check: bool = False) -> float:
    path = workdir / f"{fmt}.log"
    write_log(path, GENERATORS[fmt], lines)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = parse_files([path], fmt)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    assert len(result.records) == lines, (fmt, len(result.records))
    per_million = seconds * 1e6 / lines
    target = TARGET_LINES_PER_S.get(fmt, STDOUT_TARGET)
    size_mb = path.stat().st_size / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{fmt:22s} {lines:>9,d} lines {size_mb:6.1f} MB  wall {seconds:6.2f} s  cpu {cpu:6.2f} s"
          f"{f' + workers {workers:.2f} s' if workers > 0.005 else ''}  {lines / seconds:>9,.0f} lines/s "
          f"({lines / max(cpu + max(workers, 0.0), 1e-9):,.0f} per CPU second)  "
          f"{per_million:5.2f} s per million  target {target:,d} lines/s: "
          f"{'met' if lines / seconds >= target else 'MISSED'}  (peak RSS so far {peak_mb:,.0f} MB)")
    if check:
        _check_against_one_process(path, fmt, result)
    return lines / seconds


def _check_against_one_process(path: Path, fmt: str, result) -> None:
    """The parse just timed must equal a parse in this process alone, record for record."""
    saved = os.environ.get("REPRO_PARSE_PROCESSES")
    os.environ["REPRO_PARSE_PROCESSES"] = "1"
    try:
        alone = parse_files([path], fmt)
    finally:
        if saved is None:
            del os.environ["REPRO_PARSE_PROCESSES"]
        else:
            os.environ["REPRO_PARSE_PROCESSES"] = saved
    assert [_comparable(r) for r in result.records] == [_comparable(r) for r in alone.records], fmt
    assert [str(i) for i in result.issues] == [str(i) for i in alone.issues], fmt
    print(f"{'':22s} identical to a one-process parse: {len(alone.records):,d} records, "
          f"{len(alone.issues)} issues")


def _comparable(rec) -> tuple:
    """A record with NaN made comparable and the order of ``extra`` kept."""
    def same(value):
        return "nan" if isinstance(value, float) and math.isnan(value) else (type(value).__name__, value)
    return tuple(same(v) for k, v in vars(rec).items() if k != "extra") + tuple(
        (k, same(v)) for k, v in rec.extra.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--format", choices=sorted(GENERATORS), action="append")
    parser.add_argument("--processes", type=int, help="cap on the processes a parse uses (1: this one alone)")
    parser.add_argument("--check", action="store_true",
                        help="also check the result against a one-process parse")
    args = parser.parse_args()
    if args.processes is not None:
        os.environ["REPRO_PARSE_PROCESSES"] = str(args.processes)
    with tempfile.TemporaryDirectory() as tmp:
        results = {fmt: bench(fmt, args.lines, Path(tmp), args.check) for fmt in args.format or GENERATORS}
    slow = [fmt for fmt, rate in results.items() if rate < TARGET_LINES_PER_S.get(fmt, STDOUT_TARGET)]
    if slow:
        print(f"under their lines/s target: {', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
