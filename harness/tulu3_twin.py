"""The scaled-down twin command of the Tulu 3 SFT recipes (``tulu3-8b-sft``, ``tulu3-70b-sft``).

Why this module: a twin must run the *published* command with as few, named changes as possible, so
the published trainer flags are kept here verbatim (open-instruct docs/tulu3.md at commit 30d11b4) and
:func:`twin_command` applies only the changes listed in ``TWIN_CHANGES``.  Hub ids stay as published:
the trainer resolves them offline through the asset map (``REPRO_TWIN_ASSET_MAP``).

Usage::

    python -m harness.tulu3_twin tulu3-8b-sft --num-processes 2 --output-dir /tmp/twin [--print-only]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from harness import HARNESS_DIR
from repro.errors import ReproError

TRAINER_SCRIPT = HARNESS_DIR / "open_instruct_sft.py"
REPO_ROOT = HARNESS_DIR.parent
DEFAULT_CACHE = Path(os.environ.get("REPRO_TWIN_CACHE", Path.home() / ".cache" / "repro" / "twins"))

#: finetune.py flags of the two published commands, verbatim (launcher flags are not part of this).
TULU3_SFT_FLAGS: dict[str, list[str]] = {
    "tulu3-8b-sft": shlex.split(
        "--model_name_or_path meta-llama/Llama-3.1-8B --tokenizer_name meta-llama/Llama-3.1-8B "
        "--use_slow_tokenizer --use_flash_attn --max_seq_length 4096 --preprocessing_num_workers 128 "
        "--per_device_train_batch_size 1 --gradient_accumulation_steps 2 --learning_rate 5e-06 "
        "--lr_scheduler_type linear --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 2 "
        "--output_dir output/sft_8b --with_tracking --report_to wandb --logging_steps 1 --reduce_loss sum "
        "--model_revision main --dataset_mixer_list allenai/tulu-v.3.9-mix-preview-noncommercial 1.0 "
        "--checkpointing_steps epoch --dataset_mix_dir output/sft_8b "
        "--exp_name L3.1-8B-v3.9-nc-fixed-2 --seed 123"
    ),
    "tulu3-70b-sft": shlex.split(
        "--model_name_or_path meta-llama/Llama-3.1-70B --tokenizer_name meta-llama/Llama-3.1-70B "
        "--use_slow_tokenizer --use_flash_attn --max_seq_length 4096 --preprocessing_num_workers 128 "
        "--per_device_train_batch_size 1 --gradient_accumulation_steps 2 --learning_rate 2e-06 "
        "--lr_scheduler_type linear --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 2 "
        "--output_dir output/sft_70B --with_tracking --report_to wandb --logging_steps 1 --reduce_loss sum "
        "--model_revision main --dataset_mixer_list allenai/tulu-v.3.9-mix-preview-noncommercial 1.0 "
        "--dataset_mix_dir output/sft_70B --checkpointing_steps 1000 --keep_last_n_checkpoints 20 "
        "--gradient_checkpointing --exp_name L3.1-70B-v3.9-nc-2e-6-2_ep-fixed-3 --seed 456"
    ),
}

#: What the twin changes, and why (reported with every twin run).
TWIN_CHANGES = {
    "launcher": "64 GPUs on 8 nodes with DeepSpeed ZeRO-3 + bf16 -> N CPU processes, gloo DDP, fp32",
    "gradient_accumulation_steps": "rescaled so N x 1 x GA = the twin's effective batch (16, published 128)",
    "learning_rate": "1e-3 instead of 5e-6/2e-6: a random-init 0.5M-parameter model does not move at 5e-6",
    "output_dir/dataset_mix_dir": "placed under the twin's output folder (same relative layout)",
}
TWIN_EFFECTIVE_BATCH = 16
TWIN_LEARNING_RATE = "1e-3"


def free_port() -> int:
    """A free TCP port for the rendezvous, so concurrent twins never collide on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_flag(flags: list[str], name: str, *values: str) -> list[str]:
    """Set the values of ``--name`` where it stands (so the twin reads like the published command),
    or append it when the command does not have it."""
    if name not in flags:
        return [*flags, name, *values]
    i = flags.index(name)
    j = i + 1
    while j < len(flags) and not flags[j].startswith("--"):
        j += 1
    return [*flags[: i + 1], *values, *flags[j:]]


def trainer_flags(
    recipe: str,
    num_processes: int,
    output_dir: Path,
    effective_batch: int,
    learning_rate: str,
    per_device: int | None,
) -> list[str]:
    """The published flags with the TWIN_CHANGES applied (per_device None keeps the published 1)."""
    if recipe not in TULU3_SFT_FLAGS:
        raise ReproError(f"unknown recipe {recipe!r}; twins exist for {', '.join(TULU3_SFT_FLAGS)}")
    flags = list(TULU3_SFT_FLAGS[recipe])
    if per_device is None:
        per_device = int(flags[flags.index("--per_device_train_batch_size") + 1])
    flags = set_flag(flags, "--per_device_train_batch_size", str(per_device))
    if effective_batch % (num_processes * per_device):
        raise ReproError(
            f"effective batch {effective_batch} is not a multiple of {num_processes} x {per_device}"
        )
    published_out = flags[flags.index("--output_dir") + 1]
    out = str(output_dir / Path(published_out).name)
    flags = set_flag(
        flags, "--gradient_accumulation_steps", str(effective_batch // (num_processes * per_device))
    )
    flags = set_flag(flags, "--learning_rate", learning_rate)
    flags = set_flag(flags, "--output_dir", out)
    return set_flag(flags, "--dataset_mix_dir", out)


def launcher_argv(num_processes: int, python: str = sys.executable) -> list[str]:
    """1 process: plain python.  N: accelerate's multi-GPU launcher, which on a CPU-only machine (with
    the trainer's Accelerator(cpu=True)) gives real gloo DDP; ``--cpu`` would silently run 1 process."""
    if num_processes == 1:
        return [python, str(TRAINER_SCRIPT)]
    accelerate = shutil.which("accelerate", path=str(Path(python).parent)) or "accelerate"
    return [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(TRAINER_SCRIPT),
    ]


def twin_env(asset_map: Path, num_processes: int) -> dict[str, str]:
    """One BLAS/OpenMP thread per process (2 processes on 2 cores), offline hub, the asset map."""
    env = dict(os.environ)
    env.update(
        REPRO_TWIN_ASSET_MAP=str(asset_map), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def twin_command(
    recipe: str,
    num_processes: int,
    output_dir: Path,
    asset_map: Path,
    effective_batch: int = TWIN_EFFECTIVE_BATCH,
    learning_rate: str = TWIN_LEARNING_RATE,
    per_device: int | None = None,
    extra_flags: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the twin run; ``extra_flags`` override trainer flags (e.g. ``--max_train_steps 4``)."""
    flags = trainer_flags(recipe, num_processes, Path(output_dir), effective_batch, learning_rate, per_device)
    extra = list(extra_flags or [])
    while extra:
        name = extra.pop(0)
        values = []
        while extra and not extra[0].startswith("--"):
            values.append(extra.pop(0))
        flags = set_flag(flags, name, *values)
    return launcher_argv(num_processes) + flags, twin_env(asset_map, num_processes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.tulu3_twin", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(TULU3_SFT_FLAGS))
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--print-only", action="store_true", help="print the command instead of running it")
    parser.epilog = "Trainer flags after '--' override the twin's (e.g. -- --max_train_steps 4)."
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    try:
        from harness.assets import build_assets

        asset_map = build_assets(args.cache_dir)["asset_map"]
        cmd, env = twin_command(
            args.recipe, args.num_processes, args.output_dir.resolve(), asset_map, extra_flags=extra
        )
    except ReproError as exc:
        print(f"tulu3_twin: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    shown = f"REPRO_TWIN_ASSET_MAP={asset_map} OMP_NUM_THREADS=1 " + shlex.join(cmd)
    if args.print_only:
        print(shown)
        return 0
    print(f"twin: {shown}", flush=True)
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
