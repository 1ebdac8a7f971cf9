"""Render a recipe's command for a planned geometry: argv per node, a shell-quoted string, and the
launcher config files rewritten for the new topology.

Each launcher kind has one small function that knows its own topology flags; the entry point's batch
flags are rewritten from the recipe's declared BatchFlags. Rendering the published topology gives
back the recipe's own command (a test holds us to that).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable

from repro.catalog import loader as catalog
from repro.inputs import read_text
from repro.plan.rescale import Geometry
from repro.catalog.schema import Arg, Recipe

CONFIG_DIR = "repro_configs"  # where rewritten launcher configs go, relative to the upstream checkout

EXECUTABLES = {
    "accelerate": ["accelerate", "launch"],
    "deepspeed": ["deepspeed"],
    "torchrun": ["torchrun"],
    "python": ["python"],
    "fast-llm": ["torchrun"],  # Fast-LLM at its pinned commit is started by torchrun
}


_VAR_REF = re.compile(r"\$(\{[A-Za-z_]\w*\}|[A-Za-z_]\w*)")


def quote(token: str) -> str:
    """shlex.quote, except that $NAME / ${NAME} stay expandable (double quotes) when the rest is inert.

    Recipes may pass values set by their prelude (AceRAG's $ENCODER_PATH) or by the user's
    environment (Fast-LLM's $EXP_BASE_DIR); single quotes would hand the literal text to the program.
    """
    if _VAR_REF.search(token) and not re.search(r'["`\\]|\$\(', token):
        return f'"{token}"'
    return shlex.quote(token)


@dataclass
class NodeCommand:
    node_rank: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    prelude: list[str] = field(default_factory=list)
    workdir: str = "."

    @property
    def shell(self) -> str:
        """One pasteable string: prelude lines verbatim, then env assignments and the quoted argv."""
        env = " ".join(f"{k}={quote(v)}" for k, v in self.env.items())
        argv = " ".join(quote(t) for t in self.argv)
        line = f"{env} {argv}" if env else argv
        cd = [f"cd {shlex.quote(self.workdir)}"] if self.workdir != "." else []
        return "\n".join([*cd, *self.prelude, line])

    def to_json(self) -> dict:
        return {"node_rank": self.node_rank, "argv": self.argv, "env": self.env, "shell": self.shell}


@dataclass
class Rendered:
    nodes: list[NodeCommand]
    files: dict[str, str]
    changes: list[dict[str, str]]  # {flag, from, to}
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# small pure helpers over argument lists


def find(args: list[Arg], *flags: str) -> Arg | None:
    return next((a for a in args if a.flag in flags), None)


def set_value(args: list[Arg], flag: str, *values: str, add: bool = True, aliases: tuple[str, ...] = ()) -> list[Arg]:
    """Replace a flag's values (keeping its spelling and =-style), or append it when add is set."""
    out, done = [], False
    for a in args:
        if a.flag in (flag, *aliases) and not done:
            out.append(a.model_copy(update={"values": tuple(values)}))
            done = True
        else:
            out.append(a)
    if not done and add:
        out.append(Arg(flag=flag, values=tuple(values)))
    return out


def tokens(args: list[Arg]) -> list[str]:
    return [t for a in args for t in a.tokens()]


def arg_changes(before: list[Arg], after: list[Arg]) -> list[dict[str, str]]:
    old = {a.flag: " ".join(a.values) for a in before if a.flag}
    new = {a.flag: " ".join(a.values) for a in after if a.flag}
    return [
        {"flag": f, "from": old.get(f, "(absent)"), "to": new.get(f, "(absent)")}
        for f in list(old) + [f for f in new if f not in old]
        if old.get(f) != new.get(f)
    ]


# ---------------------------------------------------------------------------------------------
# entry point batch flags


def entry_args(recipe: Recipe, geom: Geometry) -> list[Arg]:
    flags, args = recipe.batch.flags, list(recipe.command.args)
    if flags.per_device:
        args = set_value(args, flags.per_device, str(geom.per_device))
    if flags.grad_accum:
        args = set_value(args, flags.grad_accum, str(geom.grad_accum))
    if flags.local_batch:
        args = set_value(args, flags.local_batch, str(geom.local_batch))
    for flag, value in geom.per_rank_totals.items():
        args = set_value(args, flag, str(value))
    if flags.actors_per_node:
        args = set_value(args, flags.actors_per_node, *map(str, geom.ranks_per_node))
    return args


# ---------------------------------------------------------------------------------------------
# launchers: (recipe, geometry, node rank, main address, files) -> launcher args for that node

LauncherFn = Callable[[Recipe, Geometry, int, str, dict[str, str]], list[Arg]]


def _accelerate(recipe: Recipe, geom: Geometry, rank: int, addr: str, files: dict[str, str]) -> list[Arg]:
    args = list(recipe.command.launcher.args)
    addr = addr or "localhost"
    multi = geom.nodes > 1
    args = _rewrite_config_arg(recipe, args, "--config_file", geom, files)
    if find(args, "--num_processes") or not find(args, "--config_file"):
        args = set_value(args, "--num_processes", str(geom.processes))
    for flag, value in (("--num_machines", str(geom.nodes)), ("--machine_rank", str(rank)),
                        ("--main_process_ip", addr), ("--main_process_port", "29500")):
        present = find(args, flag)
        if present and flag == "--main_process_port":
            continue  # keep the recipe's port
        args = set_value(args, flag, value, add=multi)
    return args


def _deepspeed(recipe: Recipe, geom: Geometry, rank: int, addr: str, files: dict[str, str]) -> list[Arg]:
    args = list(recipe.command.launcher.args)
    addr = addr or "localhost"
    if geom.nodes == 1:
        devices = ",".join(str(i) for i in range(geom.processes))
        return set_value(args, "--include", f"localhost:{devices}")
    hostfile = f"{CONFIG_DIR}/hostfile"
    hosts = [addr if i == 0 else f"node-{i}" for i in range(geom.nodes)]
    files[hostfile] = "".join(f"{h} slots={n}\n" for h, n in zip(hosts, geom.ranks_per_node))
    args = [a for a in args if a.flag != "--include"]
    args = set_value(args, "--hostfile", hostfile)
    args = set_value(args, "--num_nodes", str(geom.nodes))
    return set_value(args, "--num_gpus", str(geom.ranks_per_node[0]))


def _torchrun(recipe: Recipe, geom: Geometry, rank: int, addr: str, files: dict[str, str]) -> list[Arg]:
    args = list(recipe.command.launcher.args)
    dash = find(args, "--nproc-per-node") is not None  # keep the spelling the recipe uses
    name = (lambda s: "--" + s.replace("_", "-")) if dash else (lambda s: "--" + s)
    args = set_value(args, name("nproc_per_node"), str(geom.ranks_per_node[rank]),
                     aliases=("--nproc_per_node", "--nproc-per-node"))
    endpoint = find(args, "--rdzv-endpoint", "--rdzv_endpoint")
    if endpoint is not None:  # c10d rendezvous assigns node ranks itself: the count and node 0's address
        args = set_value(args, name("nnodes"), str(geom.nodes), aliases=("--nnodes",))
        if addr is None:  # rendering the recipe as published keeps its own endpoint
            return args
        return set_value(args, endpoint.flag, f"{addr}:{_port(endpoint.values[0] if endpoint.values else '')}")
    addr = addr or "localhost"
    if geom.nodes > 1 or find(args, name("nnodes")):
        args = set_value(args, name("nnodes"), str(geom.nodes))
        args = set_value(args, name("node_rank"), str(rank))
        args = set_value(args, name("master_addr"), addr)
        args = set_value(args, name("master_port"), "29500", add=find(args, name("master_port")) is None)
    return args


def _port(endpoint: str, default: str = "29500") -> str:
    """The port of a HOST:PORT endpoint when it is a literal number, else torchrun's default."""
    _, sep, port = endpoint.rpartition(":")
    return port if sep and port.isdigit() else default


def _python(recipe: Recipe, geom: Geometry, rank: int, addr: str, files: dict[str, str]) -> list[Arg]:
    return list(recipe.command.launcher.args)


LAUNCHERS: dict[str, LauncherFn] = {
    "accelerate": _accelerate,
    "deepspeed": _deepspeed,
    "torchrun": _torchrun,
    "fast-llm": _torchrun,
    "python": _python,
}

#: launchers that start every node from one command (ssh/pdsh or a ray cluster)
SINGLE_ENTRY = {"deepspeed", "python"}


# ---------------------------------------------------------------------------------------------
# accelerate config files


_ACCELERATE_KEYS = {
    "num_processes": lambda g: g.processes,
    "num_machines": lambda g: g.nodes,
    "parallelism_config_cp_size": lambda g: g.cp,
    "parallelism_config_dp_shard_size": lambda g: g.dp,
}


def rewrite_accelerate_yaml(text: str, geom: Geometry, skip: tuple[str, ...] = ()) -> str:
    """Change only the topology values, line by line, so comments and layout stay as published.

    Keys in `skip` are set on the command line instead (the CLI wins over the config file).
    """
    for key, value in _ACCELERATE_KEYS.items():
        if key in skip:
            continue
        pattern = re.compile(rf"^(\s*{key}:\s*)(\"?)[^\s#\"]+(\"?)", re.MULTILINE)
        text = pattern.sub(lambda m, v=value(geom): f"{m.group(1)}{m.group(2)}{v}{m.group(3)}", text)
    return text


def _rewrite_config_arg(recipe: Recipe, args: list[Arg], flag: str, geom: Geometry,
                        files: dict[str, str]) -> list[Arg]:
    arg = find(args, flag)
    if arg is None:
        return args
    stored = next((c for c in recipe.config_files if c.ref == arg.values[0]), None)
    if stored is None or stored.role != "accelerate":
        return args
    text = read_text(catalog.config_file_path(recipe.id, stored.file))
    on_cli = ("num_processes", "num_machines") if find(args, "--num_processes") else ()
    new = rewrite_accelerate_yaml(text, geom, on_cli)
    if new == text:
        return args
    path = f"{CONFIG_DIR}/{PurePosixPath(stored.ref).name}"
    files[path] = new
    return set_value(args, flag, path)


# ---------------------------------------------------------------------------------------------


def node_env(env: dict[str, str], geom: Geometry, rank: int) -> dict[str, str]:
    """A pinned CUDA_VISIBLE_DEVICES list must name exactly the GPUs this node's ranks use."""
    out = dict(env)
    if "CUDA_VISIBLE_DEVICES" in out:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(geom.ranks_per_node[rank] + (
            geom.reserved_gpus if rank == len(geom.ranks_per_node) - 1 else 0)))
    return out


def entry_tokens(recipe: Recipe) -> list[str]:
    entry, kind = recipe.command.entry, recipe.command.launcher.kind
    if entry.kind == "script":
        return [entry.target]
    return ["--module", entry.target] if kind == "deepspeed" else ["-m", entry.target]


def render(recipe: Recipe, geom: Geometry, main_addr: str | None = None) -> Rendered:
    """main_addr None renders the recipe as published (its own rendezvous endpoint, localhost elsewhere)."""
    cmd, kind = recipe.command, recipe.command.launcher.kind
    files: dict[str, str] = {}
    args = entry_args(recipe, geom)
    node_ranks = [0] if kind in SINGLE_ENTRY else list(range(geom.nodes))
    nodes = []
    for rank in node_ranks:
        launcher_args = LAUNCHERS[kind](recipe, geom, rank, main_addr, files)
        argv = [*EXECUTABLES[kind], *tokens(launcher_args), *entry_tokens(recipe), *tokens(args)]
        nodes.append(NodeCommand(rank, argv, node_env(cmd.env, geom, rank), list(cmd.prelude), cmd.workdir))
    first_launcher = LAUNCHERS[kind](recipe, geom, 0, main_addr, {})
    changes = arg_changes(list(cmd.launcher.args), first_launcher) + arg_changes(list(cmd.args), args)
    notes = []
    if geom.nodes > 1 and kind == "python":  # Ray: the workers join the head node 0 runs
        notes.append(f"the command starts the job from node 0 only; the Ray cluster's head must run on node 0 "
                     f"({main_addr or 'localhost'}): 'ray start --head' there and 'ray start "
                     f"--address={main_addr or 'localhost'}:6379' on the other {geom.nodes - 1} node(s) first")
    elif geom.nodes > 1 and kind in SINGLE_ENTRY:
        notes.append(f"{kind} starts all {geom.nodes} nodes from node 0 ({main_addr or 'localhost'}, the first "
                     "host of the hostfile); run the command there only")
    elif geom.nodes > 1:
        notes.append(f"run commands[i] on node i (i = 0..{geom.nodes - 1}); node 0's address is "
                     f"{main_addr or 'localhost'}")
    return Rendered(nodes, files, changes, notes)
