"""Run a recipe's scaled-down twin: the recipe's own launcher and arguments, shrunk as its `twin`
block declares, on a tiny model built offline; then a manifest, checks, a verdict and a report.

The twin command is derived from the recipe, never written twice: the published flags stay
(hub ids included — the trainer resolves them through the twin asset map, offline), the batch
geometry comes from the twin block, and every other change is a declared override.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from repro import ROOT
from repro.catalog import loader as catalog
from repro.errors import EXIT_FAILED, ReproError
from repro.metrics import MetricRecord, read_jsonl
from repro.plan.render import set_value, tokens
from repro.catalog.schema import Arg, Recipe, TwinGeometry

CACHE_DIR = Path(os.environ.get("REPRO_CACHE", ROOT / ".repro-cache"))


@dataclass
class TwinRun:
    recipe: Recipe
    out_dir: Path
    geometry: TwinGeometry
    argv: list[str]
    env: dict[str, str]
    sets: list[tuple[str, tuple[str, ...]]]
    records: list[MetricRecord] = field(default_factory=list)
    returncode: int | None = None
    wall_s: float | None = None


# ---------------------------------------------------------------------------------------------
# the command


def parse_sets(items: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """--set KEY=VALUE -> (--KEY, values); VALUE is split like a shell word list, empty = bare flag."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReproError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-4")
        flag = key.strip() if key.startswith("-") else f"--{key.strip()}"
        out.append((flag, tuple(shlex.split(value))))
    return out


def require_twin(recipe: Recipe) -> None:
    if recipe.twin is None:
        have = sorted(r.id for r in catalog.load_all().values() if r.twin)
        raise ReproError(f"{recipe.id} has no twin yet; recipes with a twin: {', '.join(have)}")


def twin_args(recipe: Recipe, geometry: TwinGeometry, out_dir: Path,
              sets: list[tuple[str, tuple[str, ...]]]) -> list[Arg]:
    """The recipe's arguments with the twin's geometry, its declared overrides, then the user's --set."""
    require_twin(recipe)
    flags = recipe.batch.flags
    args = list(recipe.command.args)
    if flags.per_device:
        args = set_value(args, flags.per_device, str(geometry.per_device))
    if flags.grad_accum:
        args = set_value(args, flags.grad_accum, str(geometry.grad_accum))
    for o in recipe.twin.overrides:
        args = set_value(args, o.flag, *o.values)
    for name in ("--output_dir", "--dataset_mix_dir"):  # keep the published layout under out_dir
        current = next((a for a in args if a.flag == name), None)
        if current is not None:
            args = set_value(args, name, str(out_dir / "train" / Path(current.values[0]).name))
    known = {a.flag for a in args}
    for flag, values in sets:
        if flag not in known and not _entry_knows(recipe, flag):
            raise ReproError(f"--set {flag.lstrip('-')}: {recipe.command.entry.target} has no flag {flag} "
                             f"at the pinned commit ('repro show {recipe.id}' lists the recipe's flags)")
        args = set_value(args, flag, *values)
    return args


def _entry_knows(recipe: Recipe, flag: str) -> bool:
    from repro.catalog import flagschema

    schemas = flagschema.load_schemas()
    sid = recipe.command.entry.schema_id
    if not sid or sid not in schemas:
        return False
    return flagschema.resolve(flag, schemas[sid], flagschema.all_flags(sid, schemas)).name is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cuda_available() -> bool:
    if os.environ.get("REPRO_FORCE_CPU") == "1":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def launcher_argv(recipe: Recipe, geometry: TwinGeometry, on_gpu: bool) -> list[str]:
    """The recipe's launcher at twin size. On CPU: gloo DDP through accelerate's multi-GPU launcher
    (`--cpu` would silently run one process); on GPU: the recipe's own DeepSpeed config."""
    kind = recipe.command.launcher.kind
    if kind != "accelerate":
        raise ReproError(f"{recipe.id}: twins are implemented for accelerate-launched recipes; this one uses {kind}")
    p = geometry.processes
    accelerate = str(Path(sys.executable).parent / "accelerate")
    argv = [accelerate, "launch", "--num_processes", str(p), "--num_machines", "1",
            "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    if on_gpu:
        ds = next((c for c in recipe.config_files if c.role == "deepspeed"), None)
        argv += ["--mixed_precision", "bf16"]
        if ds is not None:
            argv += ["--use_deepspeed", "--deepspeed_config_file", str(catalog.config_file_path(recipe.id, ds.file))]
    else:
        argv += ["--mixed_precision", "no"] + (["--multi_gpu"] if p > 1 else ["--cpu"])
    return argv


def build_assets() -> Path:
    from harness.assets import build_assets as _build

    return Path(_build(CACHE_DIR)["asset_map"])


def prepare(recipe: Recipe, out_dir: Path, sets: list[str] | None = None,
            geometry: TwinGeometry | None = None, extra: list[Arg] | None = None) -> TwinRun:
    require_twin(recipe)
    geometry = geometry or recipe.twin.geometry
    parsed = parse_sets(sets or [])
    args = twin_args(recipe, geometry, out_dir, parsed)
    for a in extra or []:
        args = set_value(args, a.flag, *a.values)
    on_gpu = cuda_available()
    argv = [*launcher_argv(recipe, geometry, on_gpu), str(ROOT / recipe.twin.runner), *tokens(args)]
    env = dict(os.environ)
    env.update({
        "REPRO_TWIN_ASSET_MAP": str(build_assets()),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    if not on_gpu:
        env["OMP_NUM_THREADS"] = "1"  # N processes on few cores: one thread each, or they thrash
    return TwinRun(recipe, out_dir, geometry, argv, env, parsed)


def metrics_path(run: TwinRun) -> Path:
    hits = sorted((run.out_dir / "train").glob("*/metrics.jsonl"))
    if not hits:
        raise ReproError(f"{run.recipe.id}: the twin wrote no metrics.jsonl under {run.out_dir / 'train'}")
    return hits[0]


def execute(run: TwinRun, echo: bool = True) -> TwinRun:
    """Launch and stream the log to out_dir/train.log (and the console); no shell involved."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = run.out_dir / "train.log"
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(run.argv) + "\n")
        proc = subprocess.Popen(run.argv, env=run.env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        run.returncode = proc.wait()
    run.wall_s = time.perf_counter() - t0
    if run.returncode != 0:
        tail = [ln.strip() for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()][-1:]
        raise ReproError(f"{run.recipe.id}: twin training exited {run.returncode}; see {log_path}"
                         + (f" (last line: {tail[0][:200]})" if tail else ""), EXIT_FAILED)
    run.records = list(read_jsonl(metrics_path(run)))
    return run


# ---------------------------------------------------------------------------------------------
# environment key and manifest


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers", "deepspeed", "trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_name() -> str:
    if cuda_available():
        import torch

        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def env_key() -> str:
    """What must match for a curve to be compared bit for bit: device and the numeric stack."""
    v = package_versions()
    return f"{device_name()}_torch-{v.get('torch')}_transformers-{v.get('transformers')}_accelerate-{v.get('accelerate')}"


def git_state() -> tuple[str | None, bool]:
    """(HEAD sha, dirty?) of the project checkout; (None, True) outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return sha, dirty
    except (subprocess.SubprocessError, OSError):
        return None, True


def manifest(run: TwinRun) -> dict:
    sha, dirty = git_state()
    g = run.geometry
    return {
        "recipe": run.recipe.id,
        "scale": "twin",
        "project_git_sha": sha,
        "project_tree_dirty": dirty,
        "packages": package_versions(),
        "hardware": {"device": device_name(), "cpus": os.cpu_count()},
        "env_key": env_key(),
        "plan": {"processes": g.processes, "per_device_batch": g.per_device, "grad_accum": g.grad_accum,
                 "effective_batch": g.processes * g.per_device * g.grad_accum,
                 "published_effective_batch": run.recipe.batch.effective},
        "seed": next((a.values[0] for a in run.recipe.command.args if a.flag == "--seed" and a.values), None),
        "overrides": [{"flag": f, "values": list(v)} for f, v in run.sets],
        "twin_overrides": [{"flag": a.flag, "values": list(a.values)} for a in run.recipe.twin.overrides],
        "command": shlex.join(run.argv),
        "argv": run.argv,
        "returncode": run.returncode,
        "wall_s": round(run.wall_s, 2) if run.wall_s is not None else None,
        "steps": len(run.records),
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
