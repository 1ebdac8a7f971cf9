"""The CUDA-only upstreams as GPU references: the real Fast-LLM @1aa6040, fms-hf-tuning PR #642 @80d25b9 (granite
context parallel) and open-instruct @30d11b4's RLVR with vLLM and Ray, each at twin scale on one GPU, in its own
pinned environment (recipes/_upstream/<env>.yaml, built by repro/plan/upstream_envs.py), on the twin's own assets, with
the twin's own command: the runner path replaced by the upstream entry point in the pinned checkout, the launcher
taken from the upstream environment, hub ids and $VARIABLES replaced by the asset folders they stand for.

A CPU cannot run any of them (Fast-LLM asserts a CUDA device; torch's context parallel is silently wrong on a CPU;
vLLM has no CPU build at the pin), so on a CPU this module renders, resolves and parses; `repro gpu-ci --upstream`
runs them after the twins (tools/gpu-check.sh, in REFERENCES order when time is short) and writes each run's
provenance to OUT/upstream/<name>/reference.json, as the CPU upstream references record theirs.

Each reference declares how it fits one GPU (`one_gpu`), and every difference that makes from the recipe:
Fast-LLM runs its twin's one-process equivalence layout (it asserts local_world_size <= GPUs); granite keeps cp 2
with both ranks on cuda:0 over gloo (harness/runtime/upstream_shim enters the suite's shared-device mode in the
upstream processes); RLVR shares the GPU between its learner and its vLLM engine (Ray told of 2 GPUs on one device,
weights synced over gloo instead of NCCL).
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from repro.base.errors import ReproError
from repro.base.paths import ROOT
from repro.catalog.schema import Arg, Recipe

SHIM = ROOT / "harness" / "runtime" / "upstream_shim"
SNAPSHOTS_ENV = "REPRO_UPSTREAM_SNAPSHOTS"  # a folder of `git archive` tarballs named <owner>+<repo>@<commit>.tar.gz


@dataclass(frozen=True)
class GpuReference:
    name: str
    recipe: str  # the twin it is the reference for
    env: str  # recipes/_upstream/<env>.yaml
    entry: str  # the upstream entry point, relative to the checkout (replaces the twin's runner)
    log_glob: str  # the log it writes, under the run folder
    log_format: str  # repro parse --format
    one_gpu: str  # how it fits one GPU, and what that changes (declared)
    layout: str | None = None  # an equivalence layout of the twin instead of its own geometry
    shared: bool = False  # ranks share cuda:0 (the shim on PYTHONPATH, REPRO_SHARED_DEVICE=1)
    sets: tuple[str, ...] = ()  # --set KEY=VALUE on the twin's command (declared one-GPU changes)
    env_vars: dict[str, str] = field(default_factory=dict)
    pre: tuple[tuple[str, ...], ...] = ()  # run first ({bin}: the environment's bin/, {checkout}: the checkout)
    extra_path: tuple[str, ...] = ()  # checkout subfolders on PYTHONPATH besides the checkout itself


#: in the order the GPU lane runs them when time is short: Fast-LLM first (no twin can speak for its kernels, and it
#: is the one with a published MFU), then granite CP (torch's CP is wrong on CPU), then RLVR (the largest install)
REFERENCES: tuple[GpuReference, ...] = (
    GpuReference(
        "fast-llm", "fastllm-mistral-7b-pretrain", "fast-llm-1aa6040", "fast_llm/tools/train.py",
        "**/runs/*/logs/logs_rank_0.txt", "fast_llm",
        "one process at the twin's equivalence layout 1x8x1 (same --batch_size 8; Fast-LLM asserts "
        "local_world_size <= torch.cuda.device_count(), so its ranks cannot share a GPU)",
        layout="1x8x1", extra_path=("Megatron-LM",),
        pre=(("make", "-C", "{checkout}/fast_llm/csrc"),)),  # the Dockerfile's build of the data helper
    GpuReference(
        "granite-cp", "fms-granite4-h-tiny-cp8-ebs4-s8192-gas1", "fms-hf-tuning-pr642", "tuning/sft_trainer.py",
        "**/training_logs.jsonl", "fms_training_logs",
        "the twin's own geometry (cp 2): both ranks on cuda:0 over gloo through harness/runtime/upstream_shim "
        "(NCCL refuses two ranks on one device); runs only where the shared-device probe passes",
        shared=True),
    GpuReference(
        "rlvr", "tulu3-8b-rlvr", "open-instruct-30d11b4-rlvr", "open_instruct/ppo_vllm_thread_ray_gtrl.py",
        "**/events.out.tfevents.*", "tensorboard",
        "learner and vLLM engine share the GPU: a Ray head told of 2 GPUs with "
        "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1 (both see cuda:0), weights synced over gloo "
        "(--vllm_sync_backend gloo: NCCL refuses two processes of one communicator on one device)",
        sets=("vllm_sync_backend=gloo",),
        env_vars={"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1", "WANDB_MODE": "disabled"},
        pre=(("{bin}/ray", "start", "--head", "--num-gpus", "2", "--disable-usage-stats"),)),
)


def by_name(name: str) -> GpuReference:
    for ref in REFERENCES:
        if ref.name == name:
            return ref
    raise ReproError(f"no GPU upstream reference {name!r}; known: {', '.join(r.name for r in REFERENCES)}")


def substitute(token: str, paths: dict[str, str]) -> str:
    """A hub id or $VARIABLE the twin's harness resolves through its asset map -> the folder itself (the real
    upstream loads from paths). Whole words and the value of a flat `--name=value` token."""
    if token in paths:
        return paths[token]
    flag, sep, value = token.partition("=")
    if sep and flag.startswith("--") and value in paths:
        return f"{flag}={paths[value]}"
    return token


@dataclass(frozen=True)
class Rendered:
    argv: list[str]
    env: dict[str, str]
    pre: list[list[str]]
    cwd: Path


def render(ref: GpuReference, recipe: Recipe, out_dir: Path, checkout: Path, env_root: Path,
           asset_map: dict, extra: list[Arg] | None = None) -> Rendered:
    """The exact command of one reference at twin scale on one GPU (pure over its inputs)."""
    # the twin's own command is what the reference runs (imported here: only rendering needs the twin stage)
    from repro.twin.command import build  # the twin's own command
    from repro.twin.overrides import parse_sets  # the declared one-GPU --set changes
    from repro.twin.session import layout  # an equivalence layout, checked as `repro run --geometry` checks it

    g = layout(recipe, ref.layout) if ref.layout else recipe.twin.geometry
    cmd = build(recipe, g, out_dir, parse_sets(list(ref.sets)), True, extra)
    runner = str(ROOT / recipe.twin.runner)
    at = cmd.argv.index(runner)
    exe = Path(cmd.argv[0]).name
    launcher = [str(env_root / "bin" / ("python" if exe.startswith("python") else exe)), *cmd.argv[1:at]]
    paths = {**asset_map.get("datasets", {}), **asset_map.get("models", {})}
    args = [substitute(t, paths) for t in cmd.argv[at + 1:]]
    argv = [*launcher, str(checkout / ref.entry), *args]
    python_path = [str(checkout), *(str(checkout / p) for p in ref.extra_path)]
    env = {k: v for k, v in cmd.env.items() if k != "OMP_NUM_THREADS"}
    env.update(ref.env_vars)
    if ref.shared:
        python_path = [str(SHIM), str(ROOT), *python_path]
        env["REPRO_SHARED_DEVICE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env["PATH"] = os.pathsep.join([str(env_root / "bin"), os.environ.get("PATH", "")])  # python3 for make
    pre = [[t.replace("{bin}", str(env_root / "bin")).replace("{checkout}", str(checkout)) for t in p]
           for p in ref.pre]
    return Rendered(argv, env, pre, out_dir)


def snapshot_root() -> Path:
    """REPRO_UPSTREAM_SNAPSHOTS, else the nearest shared/upstream/ beside the checkout or above it."""
    if os.environ.get(SNAPSHOTS_ENV):
        return Path(os.environ[SNAPSHOTS_ENV])
    for up in ROOT.parents:
        if (up / "shared" / "upstream").is_dir():
            return up / "shared" / "upstream"
    return ROOT.parent / "shared" / "upstream"


def checkout(repo: str, commit: str, cache: Path) -> Path:
    """The pinned source: a `git archive` snapshot unpacked once into the cache (the GPU machine has no GitHub)."""
    name = f"{repo.replace('/', '+')}@{commit}"
    target = cache / "upstream-src" / name
    if (target / ".complete").is_file():
        return target
    tarball = snapshot_root() / f"{name}.tar.gz"
    if not tarball.is_file():
        raise ReproError(f"no snapshot {tarball} of {repo}@{commit[:12]}; set {SNAPSHOTS_ENV} to a folder of "
                         "`git archive` tarballs (../shared/upstream/ has the pinned ones)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(target.parent, filter="data")
    inner = target.parent / name
    if not inner.is_dir():
        raise ReproError(f"{tarball}: expected one folder {name}/ inside")
    (target / ".complete").write_text(commit + "\n", encoding="utf-8")
    return target


def plan_lines(refs: tuple[GpuReference, ...] = REFERENCES) -> list[str]:
    """What `repro gpu-ci --dry-run` says about the references (no environment is built for it)."""
    from repro.catalog import upstream_env  # the environments are data; loading them is cheap

    envs = upstream_env.load_envs()
    lines = [f"GPU upstream references (after the twins, with --upstream; in this order when time is short):"]
    for i, ref in enumerate(refs, 1):
        e = envs[ref.env]
        lines += [f"REF{i} {ref.name}: {e.repo}@{e.commit[:12]} in recipes/_upstream/{ref.env}.yaml "
                  f"(python {e.python}, {len(e.packages)} requirements as of {e.exclude_newer}), for {ref.recipe}",
                  f"     entry: {ref.entry}; log: {ref.log_glob} (repro parse --format {ref.log_format})",
                  f"     one GPU: {ref.one_gpu}"]
    return lines


def find_log(ref: GpuReference, out_dir: Path) -> Path | None:
    hits = sorted(glob.glob(str(out_dir / ref.log_glob), recursive=True))
    return Path(hits[-1]) if hits else None


def reference_record(ref: GpuReference, env, built, argv: list[str], returncode: int | None, wall_s: float,
                     log: Path | None, device: str, timed_out: bool = False) -> dict:
    """The provenance of one GPU reference run, and what its log says (parsed with repro's own parsers)."""
    from repro.verify.parsers import parse_files  # the same parsers `repro parse` uses

    record = {"reference": ref.name, "recipe": ref.recipe, "device": device, "upstream": {
        "repo": env.repo, "commit": env.commit, "environment": ref.env,
        "lock_sha256": getattr(built, "lock_sha256", None)},
        "one_gpu": ref.one_gpu, "command": shlex.join(argv), "returncode": returncode, "wall_s": round(wall_s, 1),
        "timed_out": timed_out, "log": str(log) if log else None, "steps": 0, "loss": [], "issues": []}
    if log is not None:
        try:
            parsed = parse_files([log], ref.log_format)
        except ReproError as exc:
            record["issues"] = [exc.message]
        else:
            train = [r for r in parsed.records if r.phase == "train" and r.loss is not None]
            record.update(steps=len(train), loss=[[r.step, r.loss] for r in train],
                          issues=[str(i) for i in parsed.issues][:20])
    record["status"] = ("TIMEOUT" if timed_out else "ERROR" if returncode != 0 or not record["steps"] else "RECORDED")
    return record


def run(ref: GpuReference, out_root: Path, limit_s: float, device: str) -> dict:
    """Build the environment, unpack the checkout, build the twin's assets (and chain stages), run, record."""
    # the run itself needs the catalog, the twin's assets and the environment builder
    from repro.catalog import loader as catalog  # the recipe
    from repro.catalog import upstream_env  # its pinned environment
    from repro.twin import assets  # the twin's assets, built or found
    from repro.plan import upstream_envs as envs  # the environment builder (uv)

    recipe = catalog.get(ref.recipe)
    env = upstream_env.load_envs()[ref.env]
    out_dir = out_root / "upstream" / ref.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tmp").mkdir(exist_ok=True)
    built = envs.ensure(env)
    source = checkout(env.repo, env.commit, assets.CACHE_DIR)
    hub_models, extra = {}, []
    if recipe.needs_list:
        from repro.twin.runner import inputs  # the twin's rule for how a stage reaches the command
        from repro.twin.session import upstreams  # the chain's stages, built or reused as `repro run` does

        hub_models, extra = inputs(recipe, upstreams(recipe))
    assets.write_asset_map(recipe, out_dir / "assets.json", models=hub_models)
    amap = json.loads((out_dir / "assets.json").read_text(encoding="utf-8"))
    r = render(ref, recipe, out_dir, source, built.root, amap, extra)
    child_env = dict(os.environ, **r.env)
    t0 = time.monotonic()
    timed_out, code = False, None
    with open(out_dir / "upstream.log", "w", encoding="utf-8") as log:
        log.write(shlex.join(r.argv) + "\n")
        log.flush()
        for pre in r.pre:
            subprocess.run(pre, env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=r.cwd, check=False)
        proc = subprocess.Popen(r.argv, env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=r.cwd,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(limit_s, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    record = reference_record(ref, env, built, r.argv, code, time.monotonic() - t0, find_log(ref, out_dir), device,
                              timed_out)
    (out_dir / "reference.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record
