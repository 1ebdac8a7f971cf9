"""`repro run ID --scale upstream`: the REAL upstream at twin scale. The recipe's published command through its own
launcher, from the pinned checkout (repro.plan.upstream_source), in the pinned environment (repro.plan.upstream_envs), at the
twin's geometry and on the twin's assets (exported for the old library versions: harness.assets.export), with only
the CPU changes the twin block declares (twin.upstream.cpu_changes). Its own logs are read by `repro parse`.

Why: every golden was recorded by the twin itself; this run is what the twin is held to (repro.twin.upstream_ref).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from repro.catalog.schema import Arg, Recipe
from repro.catalog.upstream_env import UpstreamEnv, env_for
from repro.base.errors import EXIT_FAILED, ReproError
from repro.base.metrics import MetricRecord, write_jsonl
from repro.plan.render import EXECUTABLES, LAUNCHERS, find, set_value, tokens

#: always set for an upstream run at twin scale (the twin's own offline settings, plus W&B off: the RM under
#: WANDB_MODE=offline hangs in a network retry loop after its last eval)
BASE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
METRICS = "upstream-metrics.jsonl"
#: the folder of declared launcher-side hooks (only a sitecustomize.py: no repro package reaches the upstream's path)
HOOKS_DIR = Path(__file__).resolve().parents[2] / "harness" / "upstream_hooks"
HOOKS_ENV = "REPRO_UPSTREAM_HOOKS"


@dataclass
class UpstreamCommand:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    files: dict[str, str] = field(default_factory=dict)


def environment(recipe: Recipe) -> UpstreamEnv:
    """The recipe's pinned environment: named by twin.upstream.env or found by the pinned upstream."""
    up = recipe.provenance.upstream
    named = recipe.twin.upstream.env if recipe.twin and recipe.twin.upstream else None
    return env_for(up.repo, up.commit, named)


def require(recipe: Recipe) -> None:
    if recipe.twin is None or recipe.twin.upstream is None:
        raise ReproError(f"{recipe.id}: no twin.upstream block: its upstream run at twin scale is not declared "
                         "(which logs to read, which CPU changes); see README 'The upstream lane'")


def asset_paths(built: dict, export_root: Path) -> dict[str, str]:
    """Every name the command may use for an asset (hub id, file name) -> the path the upstream reads: model
    and tokenizer folders as their transformers-4 export, datasets as built."""
    from harness.assets.export import export  # lazy: a later stage or a heavy import, only when this runs

    out: dict[str, str] = {}
    for b in built.values():
        folder = b.spec.kind != "dataset"
        root = str(export(b.root, export_root)) if folder else None
        for name, path in b.entries.items():
            out[name] = root if folder and Path(path) == b.root else path
    return out


def substitute(args: list[Arg], paths: dict[str, str]) -> list[Arg]:
    """Each value naming an asset (hub id, file name) -> its path; inside a JSON object value too, where the names
    are its keys (open-instruct's --dataset_mixer '{"allenai/...": 1.0}' form), as the twin's trainer reads it."""
    return [a.model_copy(update={"values": tuple(_substitute_value(v, paths) for v in a.values)}) for a in args]


def _substitute_value(value: str, paths: dict[str, str]) -> str:
    if value in paths:
        return paths[value]
    if value.lstrip().startswith("{"):
        try:
            mixer = json.loads(value)
        except ValueError:
            return value
        if isinstance(mixer, dict) and any(k in paths for k in mixer):
            return json.dumps({paths.get(k, k): v for k, v in mixer.items()})
    return value


def _swap_names(value, paths: dict[str, str]):
    if isinstance(value, str):
        return paths.get(value, value)
    if isinstance(value, list):
        return [_swap_names(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _swap_names(v, paths) for k, v in value.items()}
    return value


def data_configs(recipe: Recipe, args: list[Arg], paths: dict[str, str], out_dir: Path,
                 written: dict[str, str]) -> list[Arg]:
    """A stored data config (role data: fms's --data_config_path) names its data sets by hub id, which the twin
    resolves offline; the upstream reads a copy under out_dir/upstream-configs with each name as its asset's path,
    the same substitution the flags get. Nothing else in the file changes (the YAML is re-serialized)."""
    import yaml
    from repro.catalog import loader as catalog  # lazy: a later stage or a heavy import, only when this runs

    stored = {str(catalog.config_file_path(recipe.id, c.file)): c for c in recipe.config_files if c.role == "data"}
    out = []
    for a in args:
        values = []
        for v in a.values:
            if v in stored:
                data = yaml.safe_load(Path(v).read_text(encoding="utf-8"))
                target = out_dir / "upstream-configs" / Path(v).name
                written[str(target)] = yaml.safe_dump(_swap_names(data, paths), sort_keys=False)
                v = str(target)
            values.append(v)
        out.append(a.model_copy(update={"values": tuple(values)}))
    return out


def hooks(recipe: Recipe) -> list[str]:
    """The hooks the CPU changes name, in declaration order, each once: all run in the one sitecustomize."""
    names: list[str] = []
    for change in recipe.twin.upstream.cpu_changes:
        names += [h for h in change.hooks if h not in names]
    return names


def apply_cpu_changes(recipe: Recipe, args: list[Arg]) -> tuple[list[Arg], dict[str, str]]:
    env: dict[str, str] = {}
    for change in recipe.twin.upstream.cpu_changes:
        args = [a for a in args if a.flag not in change.drop]
        for a in change.set:
            args = set_value(args, a.flag, *a.values)
        env.update(change.env)
    names = hooks(recipe)
    if names:
        env[HOOKS_ENV] = ",".join(names)
    return args, env


def stage_inputs(recipe: Recipe, ups: list, export_root: Path) -> tuple[dict[str, str], list[Arg]]:
    """The stages a chained recipe starts from, handed over by the twin's own rule (repro.twin.runner.inputs): the
    same checkpoint the twin starts from, each model folder in it exported for the old library versions (a
    transformers-5 config.json's rope_parameters is silently ignored by 4.x), under export_root/<stage>/."""
    from harness.assets.export import export  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin.runner import inputs  # lazy: a later stage or a heavy import, only when this runs

    def exported(stage: str, path: str) -> str:
        return str(export(Path(path), export_root / stage)) if (Path(path) / "config.json").is_file() else path

    hub_models, extra = inputs(recipe, ups)
    stage_of = {str(u.input_path): u.stage for u in ups}
    hub_models = {hub: exported(stage_of[p], p) for hub, p in hub_models.items()}
    extra = [a.model_copy(update={"values": tuple(exported(stage_of[v], v) for v in a.values)}) for a in extra]
    return hub_models, extra


def build(recipe: Recipe, out_dir: Path, env_root: Path, checkout: Path, env_spec: UpstreamEnv,
          paths: dict[str, str], twin_workdir: Path | None = None, extra: list[Arg] | None = None) -> UpstreamCommand:
    """argv, environment and working folder of the upstream run: pure, so a test can read it without running.
    `extra`: the chained stages' inputs (stage_inputs), set as the twin sets them."""
    from repro.twin.command import SINGLE, _config_paths, free_port, geometry, overlay, scratch_env, twin_args  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin.overrides import parse_sets  # lazy: a later stage or a heavy import, only when this runs

    require(recipe)
    g = recipe.twin.geometry
    args = twin_args(recipe, g, out_dir, parse_sets([]), on_gpu=False, extra=extra)
    args, change_env = apply_cpu_changes(recipe, substitute(args, paths))
    kind = recipe.command.launcher.kind
    files: dict[str, str] = {}
    written: dict[str, str] = {}
    args = data_configs(recipe, args, paths, out_dir, written)
    launcher = LAUNCHERS[kind](recipe, geometry(g), 0, SINGLE.addr, files)
    if recipe.twin.upstream.launcher_args is not None:
        launcher = _config_paths(recipe, list(recipe.twin.upstream.launcher_args), files, out_dir, written)
        if kind == "accelerate" and find(launcher, "--main_process_port") is None:
            # a free rendezvous port, as the overlay gives the twin: 29500 collides with any concurrent run
            launcher = set_value(launcher, "--main_process_port", str(free_port()))
    else:
        launcher = overlay(kind, _config_paths(recipe, launcher, files, out_dir, written), g.processes, False, out_dir,
                           written, SINGLE)
    exe_words = EXECUTABLES[kind]
    exe = [str(env_root / "bin" / exe_words[0]), *exe_words[1:]]
    up = recipe.twin.upstream
    workdir = checkout / recipe.command.workdir
    if up.cwd == "twin_workdir":
        if twin_workdir is None:
            raise ReproError(f"{recipe.id}: twin.upstream.cwd twin_workdir needs twin.workdir_files")
        workdir = twin_workdir
    entry = recipe.command.entry
    if up.cwd == "run":  # files it writes relative to its cwd land in the run folder, never in the shared checkout
        workdir = out_dir
    script = entry.target
    if up.cwd in ("twin_workdir", "run") and entry.kind == "script":  # run from elsewhere: the script by its path
        script = str(checkout / recipe.command.workdir / entry.target)
    target = [script] if entry.kind == "script" else ["-m", entry.target]
    if kind == "python":
        argv = [*exe, *target, *tokens(args)]
    else:
        argv = [*exe, *tokens(launcher), *(target if entry.kind == "script" else ["--module", entry.target]),
                *tokens(args)]
    env = {k: v for k, v in recipe.command.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(BASE_ENV)
    env.update(scratch_env(out_dir))
    # JIT-built C++ ops (DeepSpeed's shm comm, cpu_adam) are tied to the torch they were built against: the
    # pinned environment keeps its own, or it loads repro's build and dies on an undefined symbol (measured:
    # LightRAG's torch 2.7.1 on the .so repro's torch 2.13 built)
    env["TORCH_EXTENSIONS_DIR"] = str(env_root.parent / f"{env_root.name}.torch_extensions")
    env.update(env_spec.env)
    env.update(change_env)
    env["PATH"] = os.pathsep.join([str(env_root / "bin"), os.environ.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(env_root)
    # the child's path: the checkout when the upstream is run from source, never repro's own packages
    from repro.twin.guard import CHILD_PYTHONPATH

    # declared hooks: their sitecustomize first, so Python imports it at start-up
    path = [str(HOOKS_DIR)] if HOOKS_ENV in change_env else []
    path += ([str(checkout)] if env_spec.source_on_path else []) + [str(checkout / p) for p in up.pythonpath]
    env[CHILD_PYTHONPATH] = os.pathsep.join(path)
    return UpstreamCommand(argv, env, workdir, written)


def parse_logs(recipe: Recipe, out_dir: Path) -> tuple[list[MetricRecord], dict[str, str]]:
    """The upstream's own logs, read by `repro parse`'s parsers into the normalized record (train steps)."""
    from repro.verify.parsers import parse_files  # lazy: a later stage or a heavy import, only when this runs

    # a pattern matching several files (checkpoint-*/trainer_state.json) means the newest: each holds the whole history
    hits = [sorted(out_dir.glob(pattern), key=lambda p: p.stat().st_mtime) for pattern in recipe.twin.upstream.logs]
    paths = [h[-1] for h in hits if h]
    if not paths:
        raise ReproError(f"{recipe.id}: the upstream wrote none of {', '.join(recipe.twin.upstream.logs)} under "
                         f"{out_dir}", EXIT_FAILED)
    result = parse_files(paths)
    records = [r for r in result.records if r.phase == "train" and r.rank in (None, 0)]
    if recipe.twin.upstream.log_step == "samples":
        records = samples_to_steps(recipe, records)
    return records, result.format


def samples_to_steps(recipe: Recipe, records: list[MetricRecord]) -> list[MetricRecord]:
    """A log whose step is the samples seen (reward_modeling.py's TensorBoard scalars at step=episode) -> optimizer
    steps, by the twin geometry's effective batch; a step that is not a whole number of batches is refused."""
    g = recipe.twin.geometry
    batch = g.processes * g.per_device * g.grad_accum
    odd = [r.step for r in records if r.step % batch]
    if odd:
        raise ReproError(f"{recipe.id}: twin.upstream.log_step samples: logged step {odd[0]} is not a multiple of the "
                         f"effective batch {batch}; the log's step is not the samples seen", EXIT_FAILED)
    return [replace(r, step=r.step // batch) for r in records]


def run(recipe: Recipe, out_dir: Path, source: str | None = None, echo: bool = False, quiet: bool = False) -> dict:
    """Build what is missing (environment, checkout, exported assets, the stages a chained recipe starts from),
    launch, parse; returns the manifest. A chained recipe's stages come from the orchestrator
    (repro.twin.session.upstreams: the twin's stage cache, built when missing, leased for the whole run), so the
    upstream starts from exactly the checkpoint the twin starts from."""
    from repro.twin.session import upstreams  # lazy: a later stage or a heavy import, only when this runs

    require(recipe)
    with ExitStack() as held:
        ups = upstreams(recipe, quiet=quiet, held=held) if recipe.needs_list else []
        return _run(recipe, out_dir, source, echo, quiet, ups)


def _run(recipe: Recipe, out_dir: Path, source: str | None, echo: bool, quiet: bool, ups: list) -> dict:
    from repro.twin import assets, launch  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin.runner import git_state  # lazy: a later stage or a heavy import, only when this runs
    from repro.plan import upstream_envs as envs  # lazy: a later stage or a heavy import, only when this runs
    from repro.plan import upstream_source as sources  # lazy: a later stage or a heavy import, only when this runs

    if recipe.twin.upstream.cpu_blocker:
        raise ReproError(f"{recipe.id}: the real upstream cannot train on a CPU: {recipe.twin.upstream.cpu_blocker}")
    spec = environment(recipe)
    if spec.device == "cuda-only":
        raise ReproError(f"{recipe.id}: {spec.name} trains only on CUDA ({spec.cuda_reason}); it runs in the GPU lane")
    built_env = envs.ensure(spec, quiet=quiet)
    src = sources.ensure(spec, source, quiet=quiet)
    built = assets.build(recipe)
    paths = asset_paths(built, assets.CACHE_DIR.resolve() / "exports")
    out_dir.mkdir(parents=True, exist_ok=True)
    hub_models, extra = stage_inputs(recipe, ups, out_dir / "inputs")
    paths.update(hub_models)
    (out_dir / "tmp").mkdir(exist_ok=True)
    twin_workdir = None
    if recipe.twin.upstream.cwd == "twin_workdir":
        from repro.twin import workdir  # lazy: a later stage or a heavy import, only when this runs

        twin_workdir = workdir.materialize(recipe, out_dir, assets.roots(recipe))
    cmd = build(recipe, out_dir, built_env.root, src.root, spec, paths, twin_workdir, extra)
    for path, content in cmd.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
    (out_dir / "env.lock.txt").write_text(built_env.lock, encoding="utf-8")
    if not quiet:
        print(f"{recipe.id}: the real upstream {spec.repo}@{spec.commit[:12]} at twin scale in {out_dir}", flush=True)
    env = {**os.environ, **cmd.env}
    rc, wall = launch.run(cmd.argv, env, out_dir / "train.log", echo, cmd.cwd)
    if rc != 0:
        last = launch.last_error_line(out_dir / "train.log")
        raise ReproError(f"{recipe.id}: the upstream exited {rc}; see {out_dir / 'train.log'}"
                         + (f" ({last[:300]})" if last else ""), EXIT_FAILED)
    records, formats = parse_logs(recipe, out_dir)
    write_jsonl(out_dir / METRICS, records)
    sha, dirty = git_state()
    manifest = {
        "recipe": recipe.id, "scale": "upstream", "project_git_sha": sha, "project_tree_dirty": dirty,
        "upstream": {"repo": spec.repo, **src.manifest()},
        "environment": {"name": spec.name, "lock_sha256": built_env.lock_sha256, "path": str(built_env.root),
                        "lock_file": "env.lock.txt", "exclude_newer": str(spec.exclude_newer)},
        "assets": {name: b.key for name, b in built.items()},
        **({"upstreams": [u.as_manifest() for u in ups]} if ups else {}),
        "cpu_changes": [c.model_dump() for c in recipe.twin.upstream.cpu_changes],
        "hooks": _hooks_record(recipe),
        "plan": {"processes": recipe.twin.geometry.processes, "per_device_batch": recipe.twin.geometry.per_device,
                 "grad_accum": recipe.twin.geometry.grad_accum},
        "command": shlex.join(cmd.argv), "argv": cmd.argv, "cwd": str(cmd.cwd),
        "env": {k: v for k, v in cmd.env.items() if k not in ("PATH",)},
        "logs": formats, "returncode": rc, "wall_s": round(wall, 2), "steps": len(records),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _hooks_record(recipe: Recipe) -> dict | None:
    """The hooks that ran inside the upstream's processes and the sha256 of the sitecustomize.py that holds them:
    the run's manifest says exactly what ran inside; None when no CPU change names a hook (nothing on the path)."""
    names = hooks(recipe)
    if not names:
        return None
    file = HOOKS_DIR / "sitecustomize.py"
    return {"names": names, "sitecustomize": str(file.relative_to(HOOKS_DIR.parents[1])),
            "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


def read_records(out_dir: Path) -> list[MetricRecord]:
    from repro.base.metrics import read_jsonl  # lazy: a later stage or a heavy import, only when this runs

    return list(read_jsonl(out_dir / METRICS))
