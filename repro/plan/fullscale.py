"""The full-scale path: the pinned upstream cloned into a cache and checked against the commit,
its pinned requirements installed into the current environment, the rescaled command launched.

Everything that decides *what* happens is a pure function (`checkout_steps`, `install_steps`,
`launch_steps`) so CI, which has no GPU and no GitHub, can test it; `launch` only executes them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from repro.base.errors import EXIT_FAILED, ReproError
from repro.catalog.schema import Recipe
from repro.base.device import cuda_usable
from repro.plan.planner import make_plan
from repro.plan.rescale import Request
from repro.plan.retry import half
from repro.plan.retry import is_oom

UPSTREAM_CACHE = Path(os.environ.get("REPRO_UPSTREAM_CACHE", Path.home() / ".cache" / "repro" / "upstream"))
#: Packages that only build on a CUDA machine; their absence is reported, never silently skipped.
GPU_ONLY = {"flash-attn", "vllm"}
_SHELL_META = re.compile(r"[|&;<>()$`\\\"'*?~]")


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    cwd: str | None = None
    why: str = ""

    def shell(self) -> str:
        return (f"(cd {shlex.quote(self.cwd)} && " if self.cwd else "") + shlex.join(self.argv) + (")" if self.cwd else "")


def checkout_dir(recipe: Recipe, cache: Path = UPSTREAM_CACHE) -> Path:
    up = recipe.provenance.upstream
    return cache / f"{up.repo.replace('/', '+')}@{up.commit[:12]}"


def checkout_steps(recipe: Recipe, cache: Path = UPSTREAM_CACHE) -> list[Step]:
    """Clone, fetch exactly the pinned commit (a PR ref when it is on no branch), check it out."""
    up = recipe.provenance.upstream
    dest = str(checkout_dir(recipe, cache))
    fetch = up.ref or up.commit
    return [
        Step(("git", "init", "-q", dest), why="an empty repository for the pinned checkout"),
        Step(("git", "-C", dest, "fetch", "--depth", "1", f"https://github.com/{up.repo}.git", fetch),
             why=f"fetch {fetch} from {up.repo}"),
        Step(("git", "-C", dest, "checkout", "-q", "--detach", up.commit), why=f"check out {up.commit}"),
    ]


def install_steps(recipe: Recipe, python: str = sys.executable, has_cuda: bool = True) -> tuple[list[Step], list[str]]:
    """pip installs of the exact pins, then the upstream's own install steps; plus what is unpinned."""
    env, dest = recipe.environment, str(checkout_dir(recipe))
    pins = [f"{name}=={version}" for name, version in env.packages.items()
            if version and (has_cuda or name not in GPU_ONLY)]
    notes = [f"{name} is unpinned upstream; pip will resolve it" for name, v in env.packages.items() if not v]
    if not has_cuda:
        notes += [f"{name} skipped: it builds only with CUDA" for name in GPU_ONLY if env.packages.get(name)]
    steps = [Step((python, "-m", "pip", "install", *pins), why="the library versions pinned at the commit")] if pins else []
    for line in env.install:
        if _SHELL_META.search(line):
            notes.append(f"not run automatically (shell syntax): {line}")
            continue
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            words = [python, "-m", *words]
        steps.append(Step(tuple(words), cwd=dest, why="the upstream's own install step"))
    return steps, notes


def launch_steps(recipe: Recipe, plan: dict) -> tuple[Step, dict[str, str]]:
    """Node 0's command from the plan (files written under the checkout). The user's --set values are
    already in the recipe the plan was rendered from (repro.twin.overrides.with_sets)."""
    node = plan["commands"][0]
    argv = list(node["argv"])
    workdir = str(checkout_dir(recipe) / recipe.command.workdir)
    return Step(tuple(argv), cwd=workdir, why="the rescaled published command"), dict(node["env"])


def _run(step: Step, env: dict[str, str] | None = None) -> None:
    print(f"$ {step.shell()}    # {step.why}", flush=True)
    rc = subprocess.run(step.argv, cwd=step.cwd, env=env).returncode
    if rc != 0:
        raise ReproError(f"step failed (exit {rc}): {step.shell()}", EXIT_FAILED)


def launch(recipe: Recipe, plan: dict, out: Path) -> int:
    if recipe.command.prelude:
        raise ReproError(f"{recipe.id}: its command needs shell prelude lines; run the plan's 'command' "
                         "in a shell from the upstream checkout instead")
    if not cuda_usable():
        raise ReproError(f"{recipe.id}: --scale full needs CUDA GPUs; none is visible here")
    dest = checkout_dir(recipe)
    if not (dest / ".git").is_dir():
        for step in checkout_steps(recipe):
            _run(step)
    head = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head != recipe.provenance.upstream.commit:
        raise ReproError(f"{dest} is at {head or 'nothing'}, not the pinned {recipe.provenance.upstream.commit}; "
                         "delete it and rerun")
    steps, notes = install_steps(recipe)
    for note in notes:
        print(f"note: {note}")
    for step in steps:
        _run(step)
    if len(plan["commands"]) > 1:
        print(f"note: this machine runs node 0; run commands[1:] of `repro plan {recipe.id} --json` on the others")

    def train(p: dict, log: Path) -> int:
        write_plan_files(recipe, p)  # a retried plan rewrites the launcher configs (micro-batch, accumulation)
        return _train(*launch_steps(recipe, p), log)

    return train_with_retry(recipe, plan, out, train)


def write_plan_files(recipe: Recipe, plan: dict) -> None:
    for path, content in plan["files"].items():
        target = checkout_dir(recipe) / recipe.command.workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")


def _train(step: Step, env: dict[str, str], log_path: Path) -> int:
    """The training command, its output on the console and in the run's log (the OOM retry reads it)."""
    print(f"$ {step.shell()}    # {step.why}", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + step.shell() + "\n")
        proc = subprocess.Popen(step.argv, cwd=step.cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace")
        for line in proc.stdout or ():
            log.write(line)
            sys.stdout.write(line)
        return proc.wait()


def retry_plan(recipe: Recipe, plan: dict) -> dict:
    """The plan after an out-of-memory: the same request with the per-device batch capped at half
    (repro.plan.retry.half decides; the planner keeps the effective batch exact or refuses)."""
    req = plan["request"]
    cap = half(recipe, plan["per_device_batch"])
    return make_plan(recipe, Request(req["gpus"], req["nodes"], req["gpu_mem_gib"], max_per_device=cap))


def train_with_retry(recipe: Recipe, plan: dict, out: Path, train) -> int:
    """Run `train(plan, log_path) -> exit code`; on out-of-memory, retry at half the per-device batch.
    Every attempt is recorded in OUT/full-run.json (plan geometry, exit code, log)."""
    out.mkdir(parents=True, exist_ok=True)
    attempts: list[dict] = []
    while True:
        log = out / f"train-{len(attempts)}.log"
        rc = train(plan, log)
        attempts.append({"per_device_batch": plan["per_device_batch"], "grad_accum": plan["grad_accum"],
                         "effective_batch": plan["effective_batch"], "exit": rc, "log": log.name,
                         "out_of_memory": rc != 0 and is_oom(log)})
        record = {"recipe": recipe.id, "request": plan["request"], "attempts": attempts}
        (out / "full-run.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if rc == 0:
            return 0
        if not attempts[-1]["out_of_memory"]:
            raise ReproError(f"{recipe.id}: training exited {rc}; see {log}", EXIT_FAILED)
        smaller = retry_plan(recipe, plan)  # raises the one-line refusal under a fixed per-device batch
        print(f"{recipe.id}: out of memory at per-device batch {plan['per_device_batch']}; retrying at "
              f"{smaller['per_device_batch']} x {smaller['grad_accum']} accumulation (effective batch "
              f"{smaller['effective_batch']}, unchanged)", flush=True)
        plan = smaller
