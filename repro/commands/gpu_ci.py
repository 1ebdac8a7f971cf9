"""repro gpu-ci: the single-GPU CI lane. Every twin as the CPU lane runs it, on this GPU; one folder of
results (a twin folder and log each, summary.md, summary.json). The rules live in repro/report/gpu_lane.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repro.base import device
from repro.base.paths import ROOT
from repro.catalog import loader as catalog
from repro.base.errors import EXIT_FAILED, ReproError
from repro.base.metrics import read_jsonl
from repro.report import gpu_lane as lane

HELP = "the single-GPU CI lane: every twin on this GPU, GPU goldens, tokens/s and MFU (--dry-run lists it)"


def add_arguments(p) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="list what would run (ids, commands, out folders) and exit; works without a GPU")
    p.add_argument("--out", default="gpu-ci-results", help="results folder (default: ./gpu-ci-results)")
    p.add_argument("--only", action="append", default=[], metavar="ID", help="run just this twin (repeatable)")
    p.add_argument("--gpus", type=int,
                   help="GPUs to plan for (default: the ones found; 1 in --dry-run on a machine without one)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per twin before it is killed (120)")
    p.add_argument("--budget", type=float,
                   help="seconds for the whole lane: a twin that would start after it is NOT-RUN (default: none)")


def _header(gpus: int, found: device.LocalGPUs, installed: dict) -> list[str]:
    gpu = f"{found.count} x {found.name} ({found.mem_gib} GiB)" if found.count else "no NVIDIA GPU found"
    return [f"GPU lane: planned for {gpus} GPU(s); here: {gpu}",
            "goldens: GPU lane keyed by device (expected/golden/<id>/<device>_torch-...json); "
            "a CPU golden is never compared with a GPU run",
            *lane.optional_lines(installed)]


def run(args) -> int:
    found = device.detect()
    if not args.dry_run:
        if found.count == 0:
            raise ReproError("gpu-ci: no NVIDIA GPU here (no nvidia-smi, or REPRO_FORCE_CPU is set); the GPU lane "
                             "never runs CPU twins. Use --dry-run to list what it would run, or 'nox -s tests' "
                             "for the CPU lane", EXIT_FAILED)
        if not device.cuda_usable():
            raise ReproError(f"gpu-ci: nvidia-smi reports {found.name}, but torch here cannot use CUDA (a CPU build "
                             "of torch?); reinstall without constraints-cpu.txt (tools/gpu-check.sh does)",
                             EXIT_FAILED)
    recipes = catalog.load_all()
    unknown = sorted(set(args.only) - {r for r, x in recipes.items() if x.twin})
    if unknown:
        raise ReproError(f"gpu-ci --only: no twin for {', '.join(unknown)} (repro list)")
    gpus = args.gpus or found.count or 1
    out = Path(args.out).resolve()
    installed = lane.installed_optional()
    planned = lane.plan(recipes, out, gpus, sys.executable, args.only or None)
    header = _header(gpus, found, installed)
    if args.dry_run:
        print(lane.dry_run_text(planned, header))
        print(f"summary would go to {out / 'summary.md'} and {out / 'summary.json'}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for h in header:
        print(h)
    started = time.monotonic()
    rows = []
    for p in planned:
        if p.skip is not None:
            print(f"[SKIP] {p.id}: {p.skip}")
            rows.append(lane.Row(p.id, lane.SKIP, p.skip, out_dir=str(p.out_dir)))
            continue
        left = None if args.budget is None else args.budget - (time.monotonic() - started)
        if left is not None and left < 10:
            rows.append(lane.Row(p.id, lane.NOT_RUN, f"the lane's {args.budget:.0f} s budget ran out first",
                                 out_dir=str(p.out_dir)))
            print(f"[{lane.NOT_RUN}] {p.id}: budget spent")
            continue
        limit = args.time_limit if left is None else min(args.time_limit, left)
        row = _run_one(p, limit, installed)
        print(f"[{row.verdict}] {p.id}: {row.reason} ({row.wall_s} s; tokens/s {row.tokens_per_s}; MFU {row.mfu})")
        rows.append(row)
        _write(out, rows, header)  # after every twin: a killed lane still leaves its table
    _write(out, rows, header)
    bad = lane.failed(rows)
    print(f"GPU lane: {len(rows) - len(bad)} of {len(rows)} twins did not fail; summary: {out / 'summary.md'}")
    return EXIT_FAILED if bad else 0


def _write(out: Path, rows: list, header: list[str]) -> None:
    (out / "summary.md").write_text(lane.summary_markdown(rows, header), encoding="utf-8")
    (out / "summary.json").write_text(lane.summary_json(rows, header), encoding="utf-8")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the process group this lane started for one twin (its own session), if it still exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _run_one(p: lane.Planned, limit: float, installed: dict) -> lane.Row:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.monotonic()
    timed_out = False
    with open(p.log, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(p.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)  # `repro run` stops its training group on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = round(time.monotonic() - t0, 1)
    verdict = _read_json(p.out_dir / "verdict.json")
    manifest = _read_json(p.out_dir / "manifest.json")
    metrics = sorted((p.out_dir / "train").glob("*/metrics.jsonl"))
    records = list(read_jsonl(metrics[0])) if metrics else []
    configs = lane.model_configs(_read_json(p.out_dir / "assets.json") or {}, _read_json)
    last = next((ln for ln in reversed(p.log.read_text(encoding="utf-8", errors="replace").splitlines())
                 if ln.strip()), "")
    return lane.row_from_run(p, verdict, manifest, records, configs, timed_out, proc.returncode, last, wall,
                             installed)
