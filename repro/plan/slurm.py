"""Slurm batch scripts for a plan: `#SBATCH` resources, then `srun` starting the recipe's launcher once
per node, with the node rank, the main address and the port taken from Slurm's environment.

Every launcher the catalog uses gets its multi-node form here:
- accelerate: `--num_machines M --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_ADDR"`;
- torchrun (and Fast-LLM, started by torchrun): c10d rendezvous at `"$MAIN_ADDR:$MAIN_PORT"` with the job
  id as rendezvous id, so node ranks need no coordination;
- deepspeed: a hostfile built from `scontrol show hostnames`, then either one launcher per node with
  `--no_ssh --node_rank "$NODE_RANK"` (the default: srun reaches the nodes) or, when the recipe names its
  own multi-node `--launcher` (pdsh, openmpi, ...), that launcher once on the first node;
- python with Ray (Tulu 3 RLVR): the Ray head on the first node, a Ray worker on every other node joining
  it, the entry point on the first node once all nodes are alive.

The per-node part is a second script, kept literal in a quoted here-document (so the batch host expands
nothing in it) and handed to `bash -c` by srun; both scripts are built from shell-quoted tokens
(render.quote), never by pasting unquoted values, and both pass `bash -n` and ShellCheck (tests).
Everything here is a pure function of the recipe, the plan and the options; `repro submit` runs sbatch.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from repro.catalog.schema import Arg, Recipe
from repro.base.errors import ReproError
from repro.plan.render import (CONFIG_DIR, EXECUTABLES, LAUNCHERS, entry_tokens, find, quote, set_value,
                               tokens)
from repro.plan.rescale import Geometry
from repro.plan.render import entry_args

#: the variables the node script reads; srun exports the batch script's environment to every task
NODE_RANK, MAIN_ADDR, MAIN_PORT = "$NODE_RANK", "$MAIN_ADDR", "$MAIN_PORT"
RAY_PORT = 6379
#: Tulu's Beaker-specific Ray bring-up lines (the head/worker split the Slurm script does itself)
_RAY_SETUP = re.compile(r"ray_node_setup\.sh|BEAKER_REPLICA_RANK")
#: the recipe's prelude lines are its published shell text, kept verbatim (`repro lint --published`
#: reports their defects); ShellCheck's style notes about them (ls in $(...), unquoted $HOME) are not ours
PRELUDE_DIRECTIVE = "# shellcheck disable=SC2012,SC2086  # published prelude line, verbatim"
_SAFE = {  # what sbatch accepts in these options; anything else is refused rather than quoted
    "partition": re.compile(r"^[A-Za-z0-9_.,-]+$"),
    "account": re.compile(r"^[A-Za-z0-9_.-]+$"),
    "time": re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$"),
    "job_name": re.compile(r"^[A-Za-z0-9_.+-]+$"),
}
_TORCHRUN_TOPOLOGY = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend", "rdzv_endpoint",
                      "rdzv_id", "rdzv_conf", "standalone")
_DEEPSPEED_TOPOLOGY = ("--include", "--exclude", "--num_gpus", "--num_nodes", "--hostfile", "--master_addr",
                       "--master_port", "--node_rank", "--no_ssh")


@dataclass(frozen=True)
class Options:
    nodes: int
    gpus_per_node: int
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    job_name: str = "repro"
    cpus_per_task: int | None = None
    output: str | None = None  # sbatch --output pattern (%j = job id)
    port: int = 29500


@dataclass
class NodeStep:
    """What srun runs on each node: the lines of the node script, and srun's own options."""

    lines: list[str]
    srun: list[str] = field(default_factory=list)
    batch_lines: list[str] = field(default_factory=list)  # run on the batch host before srun (ssh launchers)


def check_options(o: Options) -> None:
    if o.nodes < 1:
        raise ReproError(f"--nodes must be at least 1, got {o.nodes}")
    if o.gpus_per_node < 0:
        raise ReproError(f"--gpus-per-node must be at least 0, got {o.gpus_per_node}")
    for name in ("partition", "account", "time", "job_name"):
        value = getattr(o, name)
        if value is not None and not _SAFE[name].match(value):
            raise ReproError(f"--{name.replace('_', '-')} {value!r} is not a valid Slurm {name.replace('_', ' ')}")


def sbatch_header(o: Options) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={o.job_name}", f"#SBATCH --nodes={o.nodes}",
             f"#SBATCH --ntasks={o.nodes}", "#SBATCH --ntasks-per-node=1"]
    if o.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={o.gpus_per_node}")
    if o.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={o.cpus_per_task}")
    for name, value in (("time", o.time), ("partition", o.partition), ("account", o.account)):
        if value:
            lines.append(f"#SBATCH --{name}={value}")
    if o.output:
        if "\n" in o.output or not o.output.strip():
            raise ReproError(f"--output {o.output!r} is not a usable path")
        lines.append(f"#SBATCH --output={o.output}")
    return lines


def _line(argv: list[str], env: dict[str, str] | None = None) -> str:
    words = [f"{k}={quote(v)}" for k, v in (env or {}).items()] + [quote(t) for t in argv]
    return " ".join(words)


def _dashed(args: list[Arg], name: str) -> str:
    """The recipe's own spelling of a torchrun flag (--nproc-per-node or --nproc_per_node)."""
    return "--" + (name.replace("_", "-") if find(args, "--nproc-per-node") else name)


# ---------------------------------------------------------------------------------------------
# per launcher: the node script's launcher arguments


def accelerate_args(recipe: Recipe, geom: Geometry, files: dict[str, str]) -> list[Arg]:
    args = LAUNCHERS["accelerate"](recipe, geom, 0, MAIN_ADDR, files)
    if geom.nodes > 1:
        args = set_value(args, "--machine_rank", NODE_RANK)
        args = set_value(args, "--main_process_ip", MAIN_ADDR)
        args = set_value(args, "--main_process_port", MAIN_PORT)
    return args


def torchrun_args(recipe: Recipe, geom: Geometry, files: dict[str, str]) -> list[Arg]:
    rendered = LAUNCHERS[recipe.command.launcher.kind](recipe, geom, 0, MAIN_ADDR, files)
    spell = lambda s: _dashed(rendered, s)  # noqa: E731
    drop = {f for s in _TORCHRUN_TOPOLOGY for f in ("--" + s, "--" + s.replace("_", "-"))}
    rest = [a for a in rendered if a.flag not in drop]
    return [Arg(flag=spell("nnodes"), values=(str(geom.nodes),)),
            Arg(flag=spell("rdzv_backend"), values=("c10d",)),
            Arg(flag=spell("rdzv_endpoint"), values=(f"{MAIN_ADDR}:{MAIN_PORT}",)),
            Arg(flag=spell("rdzv_id"), values=("$SLURM_JOB_ID",)), *rest]


def deepspeed_uses_ssh(recipe: Recipe) -> bool:
    """The recipe names a multi-node launcher of DeepSpeed's own (pdsh, openmpi, ...): start it once."""
    return find(list(recipe.command.launcher.args), "--launcher", "--ssh_port") is not None


def deepspeed_args(recipe: Recipe, geom: Geometry, files: dict[str, str], hostfile: str) -> list[Arg]:
    rendered = LAUNCHERS["deepspeed"](recipe, geom, 0, MAIN_ADDR, files)
    files.pop(f"{CONFIG_DIR}/hostfile", None)  # the node list comes from Slurm, not from the plan
    args = [a for a in rendered if a.flag not in _DEEPSPEED_TOPOLOGY]
    args += [Arg(flag="--hostfile", values=(hostfile,)), Arg(flag="--master_addr", values=(MAIN_ADDR,)),
             Arg(flag="--master_port", values=(MAIN_PORT,))]
    if not deepspeed_uses_ssh(recipe):
        args += [Arg(flag="--no_ssh"), Arg(flag="--node_rank", values=(NODE_RANK,))]
    return args


def hostfile_lines(path: str, slots: int) -> list[str]:
    """A DeepSpeed hostfile from Slurm's node list: one `host slots=N` line per node."""
    return [f"scontrol show hostnames \"$SLURM_JOB_NODELIST\" | while read -r host; do "
            f"echo \"$host slots={slots}\"; done > {quote(path)}"]


def uses_ray(recipe: Recipe) -> bool:
    return recipe.command.launcher.kind == "python" and (
        recipe.batch.flags.actors_per_node is not None or any(_RAY_SETUP.search(p) for p in recipe.command.prelude))


def ray_lines(nodes: int, entry_line: str, prelude: list[str]) -> list[str]:
    """Ray head on node 0, workers joining it; the entry point runs on node 0 once every node is alive."""
    alive = ("python -c 'import ray; ray.init(address=\"auto\", log_to_driver=False); "
             "print(sum(1 for n in ray.nodes() if n[\"Alive\"]))'")
    return [
        'if [ "$NODE_RANK" -eq 0 ]; then',
        f'  ray start --head --node-ip-address="$MAIN_ADDR" --port={RAY_PORT}',
        "  for _ in $(seq 1 120); do",
        f'    alive="$({alive} 2>/dev/null || echo 0)"',
        f'    if [ "$alive" -ge {nodes} ]; then break; fi',
        "    sleep 5",
        "  done",
        *("  " + p for p in prelude),
        "  status=0",
        f"  {entry_line} || status=$?",
        "  ray stop",
        '  exit "$status"',
        "fi",
        f'ray start --address="$MAIN_ADDR:{RAY_PORT}"',
        "# a worker stays while the head is up and leaves cleanly when node 0 stops it",
        f'while ray status --address="$MAIN_ADDR:{RAY_PORT}" >/dev/null 2>&1; do sleep 30; done',
        "ray stop",
    ]


def node_step(recipe: Recipe, geom: Geometry, files: dict[str, str], o: Options) -> NodeStep:
    """The launcher command of every node, in the node script's terms (pure)."""
    kind, cmd = recipe.command.launcher.kind, recipe.command
    # Slurm gives each step the GPUs it asked for (--gpus-per-node); a pinned device list would fight it
    env = {k: v for k, v in cmd.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    entry_and_args = [*entry_tokens(recipe), *tokens(_entry(recipe, geom))]
    prelude = [ln for p in cmd.prelude for ln in (PRELUDE_DIRECTIVE, p)]
    if kind == "accelerate":
        argv = [*EXECUTABLES[kind], *tokens(accelerate_args(recipe, geom, files)), *entry_and_args]
    elif kind in ("torchrun", "fast-llm"):
        argv = [*EXECUTABLES[kind], *tokens(torchrun_args(recipe, geom, files)), *entry_and_args]
    elif kind == "deepspeed":
        hostfile = "${TMPDIR:-/tmp}/repro-hostfile-$SLURM_JOB_ID"
        argv = [*EXECUTABLES[kind], *tokens(deepspeed_args(recipe, geom, files, hostfile)), *entry_and_args]
        slots = geom.ranks_per_node[0]
        if deepspeed_uses_ssh(recipe):  # its own launcher reaches the other nodes: run it once, on the batch host
            return NodeStep([], batch_lines=[*hostfile_lines(hostfile, slots), *prelude, _line(argv, env)])
        prelude = [*hostfile_lines(hostfile, slots), *prelude]
    elif uses_ray(recipe):
        argv = [*EXECUTABLES[kind], *entry_and_args]
        kept = [ln for p in cmd.prelude if not _RAY_SETUP.search(p) for ln in (PRELUDE_DIRECTIVE, p)]
        return NodeStep(ray_lines(geom.nodes, _line(argv, env), kept))
    else:  # a single-process entry point: one node, one task
        if geom.nodes > 1:
            raise ReproError(f"{recipe.id}: a plain python entry point runs on one node; pass --nodes 1")
        argv = [*EXECUTABLES[kind], *entry_and_args]
    return NodeStep([*prelude, _line(argv, env)])


def _entry(recipe: Recipe, geom: Geometry) -> list[Arg]:
    return entry_args(recipe, geom)


# ---------------------------------------------------------------------------------------------
# the script


def _heredoc_files(files: dict[str, str]) -> list[str]:
    out = []
    for path, content in sorted(files.items()):
        if "REPRO_EOF" in content:
            raise ReproError(f"config {path} contains the here-document marker REPRO_EOF")
        out += [f"mkdir -p {quote(path.rsplit('/', 1)[0])}" if "/" in path else ":",
                f"cat > {quote(path)} <<'REPRO_EOF'", content.rstrip("\n"), "REPRO_EOF"]
    return out


def script(o: Options, step: NodeStep, workdir: str, files: dict[str, str], comments: list[str],
           exports: dict[str, str] | None = None) -> str:
    """The whole sbatch script. `workdir` is where the launcher starts (the upstream checkout or the
    project); it and the rewritten config files must be on a file system every node sees."""
    check_options(o)
    node = ["set -euo pipefail", 'export NODE_RANK="$SLURM_NODEID"', *step.lines]
    if any("REPRO_NODE" in ln for ln in node):
        raise ReproError("the node script contains its here-document marker REPRO_NODE")
    lines = [*sbatch_header(o), *(f"# {c}" for c in comments), "set -euo pipefail", "",
             "# node 0 of the allocation is the main node; every node meets it on one port",
             'MAIN_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
             f"MAIN_PORT={o.port}", "export MAIN_ADDR MAIN_PORT"]
    for k, v in (exports or {}).items():
        lines.append(f"export {k}={quote(v)}")
    lines += [f"cd {quote(workdir)}", *_heredoc_files(files)]
    if step.batch_lines:
        lines += ["", *step.batch_lines]
    else:
        srun = ["srun", f"--nodes={o.nodes}", f"--ntasks={o.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                *step.srun]
        lines += ["", "# the per-node script: literal here (quoted here-document), expanded on each node",
                  "NODE_SCRIPT=\"$(cat <<'REPRO_NODE'", *node, "REPRO_NODE", ")\"",
                  " ".join(shlex.quote(w) for w in srun) + ' bash -c "$NODE_SCRIPT"']
    return "\n".join(lines) + "\n"


def node_script(text: str) -> str:
    """The node script inside a batch script (for checking it on its own)."""
    m = re.search(r"<<'REPRO_NODE'\n(.*?)\nREPRO_NODE\n", text, re.DOTALL)
    return ("#!/bin/bash\n" + m.group(1) + "\n") if m else ""
