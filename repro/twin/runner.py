"""Run a recipe's scaled-down twin: the twin command (repro.twin.command), its assets, the launch,
and the manifest that says exactly what ran (recipe, code, packages, hardware, assets, overrides)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from repro.base.contract import BAD_INPUT_FILE, DIVERGED_FILE, METRICS_FILE
from repro.base.device import cuda_usable, layout_tag
from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, ReproError
from repro.base.metrics import MetricRecord, read_jsonl
from repro.base import atomic
from repro.base.paths import ROOT
from repro.catalog.schema import Arg, Recipe, TwinGeometry
from repro.catalog.twin_files import missing_runner
from repro.twin import assets, launch, outdir, readback, resume, workdir
from repro.twin.command import SINGLE, NodeGroup, TwinCommand, build, process_env, require_twin
from repro.twin.overrides import Sets, parse_sets

__all__ = ["TwinRun", "TwinResult", "prepare", "execute", "manifest", "env_key", "require_twin", "parse_sets"]


@dataclass(frozen=True)
class TwinRun:
    """One twin run as decided before anything starts: what (recipe, overrides, assets, the stages it
    starts from), where (folder, node group, cwd) and how (geometry, argv, environment). Never changed
    after prepare(); what happened is a TwinResult."""

    recipe: Recipe
    out_dir: Path
    geometry: TwinGeometry
    argv: list[str]
    env: dict[str, str]
    sets: Sets
    asset_keys: dict[str, str]
    on_gpu: bool
    command: TwinCommand | None = None
    resumed: dict | None = None  # {"from": checkpoint} when the trainer resumes what the folder holds
    cwd: Path | None = None  # OUT/work when the twin block declares workdir_files, else the project root
    upstreams: tuple[dict, ...] = ()  # every stage it started from (repro.twin.chain.Upstream.as_manifest)
    node: NodeGroup = SINGLE

    @property
    def upstream(self) -> dict | None:
        """The one stage it started from, when there is exactly one (the manifest's `upstream`)."""
        return self.upstreams[0] if len(self.upstreams) == 1 else None


@dataclass(frozen=True)
class TwinResult:
    """What a TwinRun produced: exit code, wall time, the metric records, a divergence marker, and the
    out-of-memory retries it took to get there (the run is then the last geometry tried)."""

    run: TwinRun
    returncode: int
    wall_s: float
    records: tuple[MetricRecord, ...] = ()
    diverged: dict | None = None  # {step, metric, value} when the trainer stopped on a non-finite value
    retries: tuple[dict, ...] = ()
    #: the resume as the trainer reported it (repro.twin.resume), not as the folder suggested: None when it
    #: started from scratch
    resumed: dict | None = None

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def out_dir(self) -> Path:
        return self.run.out_dir


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


def inputs(recipe: Recipe, ups: list) -> tuple[dict[str, str], list[Arg]]:
    """How the stages `ups` reach the command: ({hub id: folder} for a published_model input, which the asset map
    resolves), [flag + path] for every other input. One rule for the twin, the upstream run and the GPU references,
    so each starts from the same checkpoint."""
    hub_models: dict[str, str] = {}
    extra: list[Arg] = []
    for u in ups:
        if u.needs is not None and u.needs.find == "published_model":
            hub_models.update(u.hub_override)
        else:
            flag = u.needs.flag if u.needs is not None else recipe.needs_list[0].flag
            extra.append(Arg(flag=flag, values=(str(u.input_path),)))
    return hub_models, extra


def prepare(recipe: Recipe, out_dir: Path, sets: list[str] | None = None,
            geometry: TwinGeometry | None = None, extra: list[Arg] | None = None, fresh: bool = False,
            node: NodeGroup = SINGLE, upstreams: list | None = None) -> TwinRun:
    """Everything decided before anything runs: bad input fails here, not in a child process.
    The caller holds the folder's lock (repro.twin.outdir.claimed). `node` is this run's node group when
    the twin spans several (repro.twin.nodes); node 0 owns the folder's settings and resume decision.
    `upstreams`: the stages a chained recipe starts from, resolved by the orchestrator
    (repro.twin.session.upstreams); this module never builds a stage."""
    require_twin(recipe)
    if missing_runner(recipe):  # one line, not the launcher's exit 1 with a log excerpt
        raise ReproError(f"{recipe.id}: {missing_runner(recipe)}")
    upstreams = upstreams or []
    if recipe.needs_list and len(upstreams) != len(recipe.needs_list):
        raise ReproError(f"{recipe.id} starts from {', '.join(n.stage for n in recipe.needs_list)}: resolve its "
                         "stages first (repro.twin.session.prepare or `repro run`)")

    hub_models, stage_args = inputs(recipe, upstreams)
    if stage_args:
        extra = [*(extra or []), *stage_args]
    g = geometry or recipe.twin.geometry
    parsed = parse_sets(sets or [])
    on_gpu = cuda_usable()
    outdir.usable_dir(out_dir)
    cmd = build(recipe, g, out_dir, parsed, on_gpu, extra, node)
    asset_map = out_dir / "assets.json"
    built = assets.build(recipe)  # once per run: the map, the keys and the work folder come from it
    keys = assets.write_asset_map(recipe, asset_map, models=hub_models, built=built)
    resumed = outdir.reconcile(out_dir, settings(recipe, g, cmd, keys, on_gpu, upstreams), fresh) if node.rank == 0 else None
    resume.clear(out_dir)  # the trainer of this launch reports where it starts (repro.twin.resume)
    for path, content in cmd.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
    (out_dir / "tmp").mkdir(exist_ok=True)
    cwd = workdir.materialize(recipe, out_dir, assets.roots(recipe, built=built)) if workdir.uses_workdir(recipe) else None
    return TwinRun(recipe, out_dir, g, cmd.argv, process_env(cmd, asset_map), parsed, keys, on_gpu, cmd,
                   resumed=resumed, cwd=cwd, upstreams=tuple(u.as_manifest() for u in upstreams), node=node)


def metrics_path(run: TwinRun) -> Path:
    hits = sorted((run.out_dir / "train").glob(f"*/{METRICS_FILE}"))
    if not hits:
        raise ReproError(f"{run.recipe.id}: the twin wrote no {METRICS_FILE} under {run.out_dir / 'train'}")
    return hits[0]


def execute(run: TwinRun, echo: bool = True) -> TwinResult:
    """Launch, stream the log to out_dir/train.log; a trainer's own bad-input exit stays exit 2. A run
    stopped for divergence keeps its records (the verdict names the step); anything else is an error."""
    log_path = run.out_dir / "train.log"
    (run.out_dir / BAD_INPUT_FILE).unlink(missing_ok=True)
    returncode, wall_s = launch.run(run.argv, run.env, log_path, echo, run.cwd)
    return finished(run, returncode, wall_s, log_path)


def finished(run: TwinRun, returncode: int, wall_s: float, log_path: Path) -> TwinResult:
    """The result of a launch that ended with `returncode` (one twin, or node 0 of several groups)."""
    marker = next(iter(sorted((run.out_dir / "train").glob(f"*/{DIVERGED_FILE}"))), None)
    if returncode != 0 and marker is not None:
        return TwinResult(run, returncode, wall_s, tuple(read_jsonl(metrics_path(run))), readback.diverged(marker),
                          resumed=resume.confirmed(run.resumed, run.out_dir))
    refused = run.out_dir / BAD_INPUT_FILE
    if returncode != 0 and refused.is_file():  # the trainer's own refusal, whatever the launcher exit
        reason = readback.refusal_message(refused)
        raise ReproError(f"{run.recipe.id}: the trainer refused its input: {reason[:300]} "
                         f"(see {log_path})", EXIT_BAD_INPUT)
    if returncode != 0:
        last = launch.last_error_line(log_path)
        code = EXIT_BAD_INPUT if returncode == EXIT_BAD_INPUT else EXIT_FAILED
        raise ReproError(f"{run.recipe.id}: twin training exited {returncode}; see {log_path}"
                         + (f" ({last[:300]})" if last else ""), code)
    return TwinResult(run, returncode, wall_s, tuple(read_jsonl(metrics_path(run))),
                      resumed=resume.confirmed(run.resumed, run.out_dir))


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


def manifest(result: TwinResult) -> dict:
    """What ran and what came of it (OUT/manifest.json; a chained stage's cache entry is keyed by it)."""
    sha, dirty = git_state()
    run = result.run
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
        "resumed": result.resumed,  # what the trainer reported (repro.twin.resume)
        "diverged": result.diverged,
        "retries": list(result.retries),
        "plan": {"nodes": run.node.nodes, "processes": g.processes, "per_device_batch": g.per_device,
                 "grad_accum": g.grad_accum,
                 "effective_batch": g.effective, "published_effective_batch": run.recipe.batch.effective},
        "seed": next((a.values[0] for a in run.recipe.command.args if a.flag == "--seed" and a.values), None),
        "overrides": [{"flag": f, "values": list(v)} for f, v in run.sets],
        "twin_overrides": [{"flag": a.flag, "values": list(a.values)} for a in run.recipe.twin.overrides],
        "config_effects": [e.model_dump() for e in run.recipe.twin.config_effects] if not run.on_gpu else [],
        "command": shlex.join(run.argv),
        "argv": run.argv,
        "returncode": result.returncode,
        "wall_s": round(result.wall_s, 2) if result.wall_s is not None else None,
        "steps": len(result.records),
        **({"upstream": run.upstream} if run.upstream else {}),
        **({"upstreams": list(run.upstreams)} if run.upstreams else {}),
    }


def write_json(path: Path, data: dict) -> None:
    atomic.write_json(path, data, indent=2)
