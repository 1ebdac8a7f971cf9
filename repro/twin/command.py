"""The twin command: the planner's own launcher rendering at twin geometry, plus one CPU (or GPU)
overlay per launcher. Nothing here knows a family; the recipe and its twin block say everything.

Why overlays: on a CPU the published launchers need different switches to really start N processes
(accelerate: `--multi_gpu` with a CPU accelerator, never the silent `--cpu` for N > 1; torchrun:
`--standalone`; deepspeed: a hostfile `localhost slots=N` with `--no_ssh`, because the CPU accelerator
reports one device and `--include localhost:0,1` fails otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from repro.base.paths import ROOT
from repro.catalog import loader as catalog
from repro.catalog.schema import Arg, Recipe, TwinGeometry
from repro.base.contract import ASSET_MAP_ENV, BAD_INPUT_ENV, BAD_INPUT_FILE, HUB_OFFLINE_ENV
from repro.base.paths import CACHE_DIR
from repro.base.errors import ReproError
from repro.plan.prelude import expand as expand_prelude
from repro.plan.render import EXECUTABLES, LAUNCHERS, entry_args, find, set_value, tokens
from repro.plan.rescale import Geometry
from repro.twin.overrides import Sets, apply_sets

LOOPBACK = "127.0.0.1"
#: Launcher flags that only make sense with a GPU stack (dropped by the CPU overlay).
_ACCELERATE_GPU_ONLY = ("--use_deepspeed", "--deepspeed_config_file", "--deepspeed_multinode_launcher",
                        "--deepspeed_hostfile", "--zero_stage", "--gpu_ids")
_TORCHRUN_TOPOLOGY = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend", "rdzv_endpoint",
                      "rdzv_id", "rdzv_conf", "standalone")
#: Entry-point flags naming where a run writes (its metrics.jsonl goes there too): moved under out_dir/train.
OUTPUT_FLAGS = ("--output_dir", "--dataset_mix_dir", "--experiment_dir")
#: launchers that start one node group per node with its rank (the others start no processes of their own)
MULTI_NODE = ("accelerate", "deepspeed", "fast-llm", "torchrun")
_DEEPSPEED_TOPOLOGY = ("--include", "--exclude", "--num_gpus", "--num_nodes", "--hostfile", "--master_addr",
                       "--master_port", "--node_rank", "--no_ssh", "--launcher")


@dataclass(frozen=True)
class NodeGroup:
    """Where one node's launcher sits in a multi-node twin: node count, this node's rank, and the
    main node's address and port (loopback on one host; Slurm's first host on a cluster)."""

    nodes: int = 1
    rank: int = 0
    addr: str = LOOPBACK
    port: int | None = None  # one port shared by every node group; None: a free one (single node)
    rdzv_id: str = "repro-twin"


SINGLE = NodeGroup()


@dataclass
class TwinCommand:
    argv: list[str]
    env: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # path (absolute) -> content written before launch
    notes: list[str] = field(default_factory=list)


def require_twin(recipe: Recipe) -> None:
    if recipe.twin is None:
        have = sorted(r.id for r in catalog.load_all().values() if r.twin)
        raise ReproError(f"{recipe.id} has no twin yet; recipes with a twin: {', '.join(have)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def geometry(g: TwinGeometry, nodes: int = 1) -> Geometry:
    """A planner Geometry for the twin's processes x per-device x accumulation on `nodes` nodes."""
    if g.processes % nodes:
        raise ReproError(f"twin geometry {g.name}: {g.processes} processes do not split over {nodes} nodes")
    per_node = g.processes // nodes
    return Geometry(gpus=g.processes, nodes=nodes, processes=g.processes, dp=g.dp, cp=g.cp, tp=1, ep=1,
                    per_device=g.per_device, grad_accum=g.grad_accum, effective=g.effective, reserved_gpus=0,
                    ranks_per_node=(per_node,) * nodes)


def effective_value(recipe: Recipe, config: str, key: str) -> str:
    """A launcher config's value as the launcher applies it: the recipe's declared effective value,
    else the literal value from the stored file (an unresolved "auto" is refused)."""
    stored = next((c for c in recipe.config_files if c.file == config), None)
    if stored is None:
        raise ReproError(f"{recipe.id}: twin.config_effects names {config!r}, which is not in config_files")
    if key in stored.effective:
        return str(stored.effective[key])
    data = json.loads(catalog.config_file_path(recipe.id, stored.file).read_text(encoding="utf-8"))
    value = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or value == "auto":
        raise ReproError(f"{recipe.id}: {config} {key} is {value!r}; declare its effective value in "
                         "config_files[].effective")
    return str(value)


def twin_args(recipe: Recipe, g: TwinGeometry, out_dir: Path, sets: Sets, on_gpu: bool,
              extra: list[Arg] | None = None) -> list[Arg]:
    """The recipe's arguments at twin geometry, its declared overrides and config effects, then --set."""
    require_twin(recipe)
    args = entry_args(recipe, geometry(g))
    for o in recipe.twin.overrides:
        args = set_value(args, o.flag, *o.values)
    for flag in recipe.twin.cp_flags:  # the CP degree follows the geometry (fms --mcp N)
        current = find(args, flag)
        if g.cp == 1:
            args = _drop(args, (flag,))
        else:
            rest = current.values[1:] if current is not None else ()
            args = set_value(args, flag, str(g.cp), *rest)
    if not on_gpu:  # the GPU path runs the launcher config itself
        for effect in recipe.twin.config_effects:
            args = set_value(args, effect.flag, effective_value(recipe, effect.config, effect.key))
    for name in OUTPUT_FLAGS:  # keep the published layout under out_dir
        current = find(args, name)
        if current is not None and current.values:
            published = expand_prelude(recipe, current.values[0])  # ${OUTPUE_NAME} -> its prelude value
            leaf = Path(published).name.lstrip("$") or "output"  # an unexpanded "$EXP_BASE_DIR" -> EXP_BASE_DIR
            args = set_value(args, name, str(out_dir / "train" / leaf))
    for a in extra or []:
        args = set_value(args, a.flag, *a.values)
    args = apply_sets(recipe, args, sets)
    # an entry argument naming a stored config file (fms --data_config_path $HOME/data_config.yaml) gets the
    # stored copy, as launcher arguments do
    refs = {c.ref: str(catalog.config_file_path(recipe.id, c.file)) for c in recipe.config_files}
    return [a.model_copy(update={"values": tuple(refs.get(v, v) for v in a.values)}) for a in args]


def executable(word: str) -> str:
    """Launchers from this interpreter's environment (the suite's venv), never a different one on PATH."""
    if word == "python":
        return sys.executable
    local = Path(sys.executable).parent / word
    return str(local) if local.exists() else (shutil.which(word) or word)


def _drop(args: list[Arg], flags: tuple[str, ...]) -> list[Arg]:
    return [a for a in args if a.flag not in flags]


def _config_paths(recipe: Recipe, args: list[Arg], files: dict[str, str], out_dir: Path,
                  written: dict[str, str]) -> list[Arg]:
    """Launcher args naming a config: the planner's rewritten copy (written under out_dir) or the
    recipe's stored copy, as absolute paths."""
    refs = {c.ref: catalog.config_file_path(recipe.id, c.file) for c in recipe.config_files}
    out = []
    for a in args:
        values = []
        for v in a.values:
            if v in files:
                target = out_dir / "launcher" / Path(v).name
                written[str(target)] = files[v]
                values.append(str(target))
            elif v in refs:
                values.append(str(refs[v]))
            else:
                values.append(v)
        out.append(a.model_copy(update={"values": tuple(values)}))
    return out


def accelerate_config_type(args: list[Arg], written: dict[str, str]) -> str | None:
    """distributed_type of the accelerate config the launcher args name (the rewritten copy or the file)."""
    import yaml

    config = find(args, "--config_file")
    if config is None or not config.values:
        return None
    path = config.values[0]
    text = written.get(path) if path in written else (Path(path).read_text(encoding="utf-8")
                                                      if Path(path).is_file() else None)
    data = yaml.safe_load(text) if text else None
    return str(data.get("distributed_type")) if isinstance(data, dict) and data.get("distributed_type") else None


def overlay(kind: str, args: list[Arg], p: int, on_gpu: bool, out_dir: Path, written: dict[str, str],
            node: NodeGroup = SINGLE) -> list[Arg]:
    """The launcher switches that start p processes in all (p / node.nodes on this node), on CPU or GPU."""
    port = str(node.port or free_port())
    multi = node.nodes > 1
    per_node = p // node.nodes
    if kind == "accelerate":
        args = set_value(args, "--main_process_port", port)
        args = set_value(args, "--dynamo_backend", "no")
        if multi:  # the planner rendered --num_machines/--machine_rank; the address is this group's
            args = set_value(args, "--main_process_ip", node.addr)
        if on_gpu:
            return set_value(args, "--mixed_precision", "bf16") if not find(args, "--mixed_precision") else args
        args = set_value(_drop(args, _ACCELERATE_GPU_ONLY), "--mixed_precision", "no")
        if accelerate_config_type(args, written) == "FSDP":
            # An FSDP config starts p processes on CPU too and exports ACCELERATE_USE_FSDP; --multi_gpu/--cpu
            # would replace it with DDP. accelerate then silently drops FSDP inside the processes, so a
            # trainer that honours the config must shard itself (harness/fms/sft_trainer.py does, FSDP2).
            return args
        # --cpu is one process by design; N > 1 needs --multi_gpu with Accelerator(cpu=True) in the trainer
        return args + [Arg(flag="--multi_gpu" if p > 1 else "--cpu")]
    if kind in ("torchrun", "fast-llm"):
        dash = find(args, "--nproc-per-node") is not None
        spell = (lambda s: "--" + s.replace("_", "-")) if dash else (lambda s: "--" + s)
        drop = tuple(f for s in _TORCHRUN_TOPOLOGY for f in ("--" + s, "--" + s.replace("_", "-")))
        args = _drop(args, drop)
        args = set_value(args, spell("nproc_per_node"), str(per_node), aliases=("--nproc_per_node", "--nproc-per-node"))
        if not multi:
            return [Arg(flag="--standalone"), *args]
        # c10d rendezvous: every node group names the same endpoint; torchrun assigns node ranks
        return [Arg(flag=spell("nnodes"), values=(str(node.nodes),)),
                Arg(flag=spell("rdzv_backend"), values=("c10d",)),
                Arg(flag=spell("rdzv_endpoint"), values=(f"{node.addr}:{port}",)),
                Arg(flag=spell("rdzv_id"), values=(node.rdzv_id,)), *args]
    if kind == "deepspeed":
        args = _drop(args, _DEEPSPEED_TOPOLOGY)
        common = [Arg(flag="--master_addr", values=(node.addr,)), Arg(flag="--master_port", values=(port,))]
        if multi:  # one launcher per node without ssh: a hostfile naming every node, this node's rank
            hostfile = out_dir / "launcher" / "hostfile"
            written[str(hostfile)] = "".join(f"node-{i} slots={per_node}\n" for i in range(node.nodes))
            return [*args, Arg(flag="--hostfile", values=(str(hostfile),)), Arg(flag="--no_ssh"),
                    Arg(flag="--node_rank", values=(str(node.rank),)), *common]
        devices = ",".join(str(i) for i in range(p))
        common.append(Arg(flag="--include", values=(f"localhost:{devices}",)))
        if on_gpu:
            return [*args, *common]
        hostfile = out_dir / "launcher" / "hostfile"
        written[str(hostfile)] = f"localhost slots={p}\n"
        return [*args, Arg(flag="--hostfile", values=(str(hostfile),)), Arg(flag="--no_ssh"),
                Arg(flag="--node_rank", values=("0",)), *common]
    return args


def build(recipe: Recipe, g: TwinGeometry, out_dir: Path, sets: Sets, on_gpu: bool,
          extra: list[Arg] | None = None, node: NodeGroup = SINGLE) -> TwinCommand:
    """argv + environment + launcher files of one twin run, or of one node group of a multi-node twin
    (the planner's rendering for that node rank, then the overlay for node.nodes groups)."""
    require_twin(recipe)
    kind = recipe.command.launcher.kind
    if node.nodes > 1 and kind not in MULTI_NODE:
        raise ReproError(f"{recipe.id}: a multi-node twin needs a launcher with node ranks "
                         f"({', '.join(sorted(MULTI_NODE))}); this recipe uses {kind}")
    if not 0 <= node.rank < node.nodes:
        raise ReproError(f"node rank {node.rank} is outside 0..{node.nodes - 1}")
    geom = geometry(g, node.nodes)
    files: dict[str, str] = {}
    launcher = LAUNCHERS[kind](recipe, geom, node.rank, node.addr, files)
    written: dict[str, str] = {}
    launcher = _config_paths(recipe, launcher, files, out_dir, written)
    launcher = overlay(kind, launcher, g.processes, on_gpu, out_dir, written, node)
    args = twin_args(recipe, g, out_dir, sets, on_gpu, extra)
    exe = [executable(EXECUTABLES[kind][0]), *EXECUTABLES[kind][1:]]
    argv = [*exe, *tokens(launcher), str(ROOT / recipe.twin.runner), *tokens(args)]
    env = {k: v for k, v in recipe.command.env.items() if k != "CUDA_VISIBLE_DEVICES" or on_gpu}
    env.update({**HUB_OFFLINE_ENV, "PYTHONUNBUFFERED": "1"})
    env.update(scratch_env(out_dir))
    if not on_gpu:
        env["OMP_NUM_THREADS"] = "1"  # N processes on few cores: one thread each, or they thrash
    return TwinCommand(argv, env, written)


def scratch_env(out_dir: Path) -> dict[str, str]:
    """Where libraries may write: the run's own folder or the suite's cache, never $HOME or /tmp
    (the datasets cache, torch elastic's temp folders, DeepSpeed's JIT builds, W&B offline files)."""
    cache = CACHE_DIR.resolve()
    return {"HF_HOME": str(cache / "hf"), "HF_DATASETS_CACHE": str(cache / "datasets"),
            "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"), "TRITON_CACHE_DIR": str(cache / "triton"),
            "MPLCONFIGDIR": str(cache / "matplotlib"), "TMPDIR": str(out_dir / "tmp"),
            "WANDB_DIR": str(out_dir / "train")}


def process_env(cmd: TwinCommand, asset_map: Path) -> dict[str, str]:
    """The child's whole environment: this one, the command's, the asset map, the project on PYTHONPATH."""
    env = dict(os.environ)
    env.update(cmd.env)
    env[ASSET_MAP_ENV] = str(asset_map)
    env[BAD_INPUT_ENV] = str(asset_map.parent / BAD_INPUT_FILE)
    # DeepSpeed JIT-builds its C++ ops (shm comm, cpu_adam: 30-40 s each) on first use: build them once
    env.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE_DIR / "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env
