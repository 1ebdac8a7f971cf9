"""Run a recipe's scaled-down twin: the twin command (repro.twin.command), its assets, the launch,
and the manifest that says exactly what ran (recipe, code, packages, hardware, assets, overrides)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from repro import ROOT
from repro.catalog.schema import Arg, Recipe, TwinGeometry
from repro.device import cuda_usable, layout_tag
from repro.errors import EXIT_BAD_INPUT, EXIT_FAILED, ReproError
from repro.metrics import MetricRecord, read_jsonl
from repro.twin import assets, launch, outdir, workdir
from repro.twin.command import BAD_INPUT_FILE, SINGLE, NodeGroup, TwinCommand, build, process_env, require_twin
from repro.twin.overrides import Sets, parse_sets
from harness.runtime.faults import DIVERGED_FILE  # the trainer writes it; one name, one place

__all__ = ["TwinRun", "prepare", "execute", "manifest", "env_key", "require_twin", "parse_sets"]


@dataclass
class TwinRun:
    recipe: Recipe
    out_dir: Path
    geometry: TwinGeometry
    argv: list[str]
    env: dict[str, str]
    sets: Sets
    asset_keys: dict[str, str]
    on_gpu: bool
    command: TwinCommand | None = None
    resumed: dict | None = None
    diverged: dict | None = None  # {step, metric, value} when the trainer stopped on a non-finite value
    retries: list[dict] = field(default_factory=list)
    cwd: Path | None = None  # OUT/work when the twin block declares workdir_files, else the project root
    upstream: dict | None = None  # the stage this one started from (repro.twin.chain), when it is one
    upstreams: list[dict] = field(default_factory=list)  # every stage it started from
    node: NodeGroup = SINGLE
    records: list[MetricRecord] = field(default_factory=list)
    returncode: int | None = None
    wall_s: float | None = None


def settings(recipe: Recipe, g: TwinGeometry, cmd: TwinCommand, keys: dict[str, str], on_gpu: bool,
             upstreams: list | None = None) -> dict:
    """What a resumed run must share with the run that made its checkpoints (for a chained stage also
    the upstream stages it started from: a hub id in the argv does not change when they do)."""
    runner = str(ROOT / recipe.twin.runner)
    out = {"recipe": recipe.id, "geometry": g.name, "lane": "gpu" if on_gpu else "cpu",
           "args": cmd.argv[cmd.argv.index(runner) + 1:], "assets": keys}
    if upstreams:
        out["upstreams"] = {u.stage: u.transform_key or u.key for u in upstreams}
    return out


def prepare(recipe: Recipe, out_dir: Path, sets: list[str] | None = None,
            geometry: TwinGeometry | None = None, extra: list[Arg] | None = None, fresh: bool = False,
            node: NodeGroup = SINGLE, upstreams: list | None = None) -> TwinRun:
    """Everything decided before anything runs: bad input fails here, not in a child process.
    The caller holds the folder's lock (repro.twin.outdir.claimed). `node` is this run's node group when
    the twin spans several (repro.twin.nodes); node 0 owns the folder's settings and resume decision."""
    require_twin(recipe)
    if upstreams is None and recipe.needs is not None:
        # a chained stage: build (or reuse) what it starts from, as `repro run` does
        from repro.commands.run import ensure_upstream

        upstreams = ensure_upstream(recipe, False, False, True)
    upstreams = upstreams or []
    hub_models: dict[str, str] = {}
    for u in upstreams:
        if u.needs is not None and u.needs.find == "published_model":
            hub_models.update(u.hub_override)
        else:
            extra = [*(extra or []), Arg(flag=u.needs.flag if u.needs else recipe.needs_list[0].flag,
                                         values=(str(u.input_path),))]
    g = geometry or recipe.twin.geometry
    parsed = parse_sets(sets or [])
    on_gpu = cuda_usable()
    outdir.usable_dir(out_dir)
    cmd = build(recipe, g, out_dir, parsed, on_gpu, extra, node)
    asset_map = out_dir / "assets.json"
    keys = assets.write_asset_map(recipe, asset_map, models=hub_models)
    resumed = outdir.reconcile(out_dir, settings(recipe, g, cmd, keys, on_gpu, upstreams), fresh) if node.rank == 0 else None
    for path, content in cmd.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
    (out_dir / "tmp").mkdir(exist_ok=True)
    cwd = workdir.materialize(recipe, out_dir, assets.roots(recipe)) if workdir.uses_workdir(recipe) else None
    run = TwinRun(recipe, out_dir, g, cmd.argv, process_env(cmd, asset_map), parsed, keys, on_gpu, cmd,
                  cwd=cwd, node=node)
    run.resumed = resumed
    run.upstreams = [u.as_manifest() for u in upstreams]
    run.upstream = run.upstreams[0] if len(run.upstreams) == 1 else None
    return run


def metrics_path(run: TwinRun) -> Path:
    hits = sorted((run.out_dir / "train").glob("*/metrics.jsonl"))
    if not hits:
        raise ReproError(f"{run.recipe.id}: the twin wrote no metrics.jsonl under {run.out_dir / 'train'}")
    return hits[0]


def execute(run: TwinRun, echo: bool = True) -> TwinRun:
    """Launch, stream the log to out_dir/train.log; a trainer's own bad-input exit stays exit 2. A run
    stopped for divergence keeps its records (the verdict names the step); anything else is an error."""
    log_path = run.out_dir / "train.log"
    refused = run.out_dir / BAD_INPUT_FILE
    refused.unlink(missing_ok=True)
    run.returncode, run.wall_s = launch.run(run.argv, run.env, log_path, echo, run.cwd)
    marker = next(iter(sorted((run.out_dir / "train").glob(f"*/{DIVERGED_FILE}"))), None)
    if run.returncode != 0 and marker is not None:
        run.diverged = json.loads(marker.read_text(encoding="utf-8"))
        run.records = list(read_jsonl(metrics_path(run)))
        return run
    if run.returncode != 0 and refused.is_file():  # the trainer's own refusal, whatever the launcher exit
        reason = json.loads(refused.read_text(encoding="utf-8"))
        raise ReproError(f"{run.recipe.id}: the trainer refused its input: {reason['message'][:300]} "
                         f"(see {log_path})", EXIT_BAD_INPUT)
    if run.returncode != 0:
        last = launch.last_error_line(log_path)
        code = EXIT_BAD_INPUT if run.returncode == EXIT_BAD_INPUT else EXIT_FAILED
        raise ReproError(f"{run.recipe.id}: twin training exited {run.returncode}; see {log_path}"
                         + (f" ({last[:300]})" if last else ""), code)
    run.records = list(read_jsonl(metrics_path(run)))
    return run


# ---------------------------------------------------------------------------------------------
# environment key and manifest


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers", "deepspeed", "trl", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_name() -> str:
    if cuda_usable():
        import torch

        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def env_key() -> str:
    """What must match for a curve to be compared bit for bit: device and the numeric stack
    (the assets are keyed separately, per asset, in the golden itself)."""
    v = package_versions()
    # ranks sharing one GPU over gloo reduce in another order than NCCL across GPUs: their own key (and so
    # their own goldens and cached chain stages, whose key includes this one); nothing changes on a CPU
    layout = layout_tag(cuda_usable())
    return (f"{device_name()}_torch-{v.get('torch')}_transformers-{v.get('transformers')}"
            f"_accelerate-{v.get('accelerate')}{layout}")


def git_state() -> tuple[str | None, bool]:
    """(HEAD sha, dirty?) of the project checkout; (None, True) outside git. Recorded goldens are outputs,
    not code: a freshly recorded golden does not make the tree dirty for the next recording."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)expected/golden"], cwd=ROOT,
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
        "assets": run.asset_keys,
        "resumed": run.resumed,
        "diverged": run.diverged,
        "retries": run.retries,
        "plan": {"nodes": run.node.nodes, "processes": g.processes, "per_device_batch": g.per_device,
                 "grad_accum": g.grad_accum,
                 "effective_batch": g.effective, "published_effective_batch": run.recipe.batch.effective},
        "seed": next((a.values[0] for a in run.recipe.command.args if a.flag == "--seed" and a.values), None),
        "overrides": [{"flag": f, "values": list(v)} for f, v in run.sets],
        "twin_overrides": [{"flag": a.flag, "values": list(a.values)} for a in run.recipe.twin.overrides],
        "config_effects": [e.model_dump() for e in run.recipe.twin.config_effects] if not run.on_gpu else [],
        "command": shlex.join(run.argv),
        "argv": run.argv,
        "returncode": run.returncode,
        "wall_s": round(run.wall_s, 2) if run.wall_s is not None else None,
        "steps": len(run.records),
        **({"upstream": run.upstream} if run.upstream else {}),
        **({"upstreams": run.upstreams} if run.upstreams else {}),
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
