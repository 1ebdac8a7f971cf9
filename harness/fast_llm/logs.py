"""Fast-LLM's log lines, log files and throughput figures at 1aa6040.

- ``format_metrics`` is ``fast_llm/logging.py::format_metrics``: the phase's fixed fields, then one
  ``{loss name}: {value:.5f}`` per loss, then every remaining metric as ``key: value`` (the trainer passes
  ``run`` - the run index - that way). The phase prints as its value (``Training``): the pinned image's
  Python 3.10 formats a ``(str, Enum)`` by value.
- ``line_prefix`` is ``configure_logging``'s format: no timestamp unless ``--log_timestamps=1``, and
  ``[Rank {rank}] `` with the rank zero-padded to ``ceil(log10(world_size))`` digits when world_size > 1.
- ``log_file`` is ``{experiment_dir}/runs/{run}/logs/logs_rank_{rank}.txt`` (``fast_llm/run.py``).
- ``get_tflops`` is ``GPTTrainer.get_tflops``: model and hardware TFLOP/s per GPU for a batch and a time
  per iteration (causal attention counted as s^2/2 pairs, a window as s*w - w^2/2, the LM head x3, MLP
  recompute never counted, hardware = dense + 7/6 attention).
- tokens/s/GPU = sequence_length x batch_size / world_size / time per iteration.

Memory fields come from ``torch.cuda`` statistics, which are 0 without CUDA, as upstream would print them.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

LOSS_NAME = "language_model_loss"
LOSS_LABEL = "language model loss"  # LossDef.formatted_name at 1aa6040

_MEMORY = (" allocated {allocated:,.2f} MiB | max allocated {max_allocated:,.2f} MiB | reserved {reserved:,.2f} MiB"
           " | max reserved {max_reserved:,.2f} MiB | global max reserved {global_max_reserved:,.2f} MiB")
_VALIDATION = ("{phase} @ iteration {iteration:6.0f}/{train_iters:6.0f} | consumed samples: {consumed_samples:12,.0f}"
               " | consumed tokens: {consumed_tokens:16,.0f} | batch size: {batch_size:3.0f}"
               " | step time: {step_time_ms:.2f} ms | throughput: {model_tflops:.2f} tflop/s (model)"
               " | {hardware_tflops:.2f} tflop/s (hardware) | {tokens_per_sec_per_gpu:.2f} tokens/s/gpu | Memory"
               ) + _MEMORY
_TRAINING = _VALIDATION + (" | learning rate: {learning_rate:.3e} | loss scale: {loss_scale:5.0f}"
                           " | grad norm: {grad_norm:.4f} | skipped iterations: {skipped_iters:3.0f}"
                           " | nan iterations: {nan_iters:3.0f} | average step time {step_time_average_ms:.2f} ms"
                           " | remaining {remaining_time}  | completion {completion_time} ({percent_done:.2f} %)")
_MEMORY_KEYS = ("allocated", "max_allocated", "reserved", "max_reserved", "global_max_reserved")
_VALIDATION_KEYS = _MEMORY_KEYS + ("iteration", "train_iters", "consumed_samples", "consumed_tokens", "step_time_ms",
                                   "batch_size", "model_tflops", "hardware_tflops", "tokens_per_sec_per_gpu")
_TRAINING_KEYS = _VALIDATION_KEYS + ("learning_rate", "loss_scale", "grad_norm", "skipped_iters", "nan_iters",
                                     "step_time_average_ms", "remaining_time", "completion_time", "percent_done")
PHASES = {"Training": (_TRAINING, _TRAINING_KEYS), "Validation": (_VALIDATION, _VALIDATION_KEYS),
          "Test": (_VALIDATION, _VALIDATION_KEYS)}
_FORMAT_MAP = {
    "remaining_time": lambda x: str(datetime.timedelta(seconds=round(x))),
    "completion_time": lambda x: str(datetime.datetime.fromtimestamp(round(x))),
}


def format_metrics(metrics: dict, phase: str, losses: tuple[tuple[str, str], ...] = ((LOSS_NAME, LOSS_LABEL),)) -> str:
    """One log line; a missing field prints as nan, as upstream's ``metrics.pop(key, nan)`` does."""
    template, keys = PHASES[phase]
    metrics = {k: _FORMAT_MAP[k](v) if k in _FORMAT_MAP else v for k, v in metrics.items()}
    outputs = [template.format(phase=phase, **{k: metrics.pop(k, math.nan) for k in keys})]
    outputs.extend(f"{label}: {metrics.pop(name, math.nan):.5f}" for name, label in losses)
    outputs.extend(f"{key}: {value}" for key, value in metrics.items())
    return " | ".join(outputs)


def line_prefix(rank: int, world_size: int, timestamps: bool = False, now: float | None = None) -> str:
    """What ``configure_logging`` puts before each message."""
    out = ""
    if timestamps:  # logging's default asctime: "2024-09-18 12:00:00,123"
        now = time.time() if now is None else now
        out = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d} "
    if world_size != 1:
        out += f"[Rank {rank_str(rank, world_size)}] "
    return out


def rank_str(rank: int, world_size: int) -> str:
    return str(rank).zfill(math.ceil(math.log10(world_size)))


def log_file(experiment_dir: Path | str, run: int, rank: int, world_size: int) -> Path:
    return Path(experiment_dir) / "runs" / str(run) / "logs" / f"logs_rank_{rank_str(rank, world_size)}.txt"


def next_run_index(experiment_dir: Path | str) -> int:
    """fast_llm/run.py: one more than the highest existing ``runs/<n>`` (0 for a new experiment)."""
    runs = Path(experiment_dir) / "runs"
    indices = [int(p.name) for p in runs.iterdir() if p.name.isdigit()] if runs.is_dir() else []
    return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class FlopShape:
    """The config fields get_tflops reads."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    head_groups: int
    kv_channels: int
    ffn_hidden_size: int
    gated: bool
    vocab_size: int
    window_size: int | None
    num_experts_per_token: int = 1


def flops_per_iteration(shape: FlopShape, batch_size: int, sequence_length: int,
                        training: bool = True) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one iteration, GPTTrainer.get_tflops before the division by time."""
    factor = 3 if training else 1
    tokens = batch_size * sequence_length
    transformer_base = 2 * factor * tokens * shape.num_layers
    dense_base = transformer_base * shape.hidden_size
    flops = 2 * (shape.num_attention_heads + shape.head_groups) * shape.kv_channels * dense_base
    flops += (2 + int(shape.gated)) * shape.ffn_hidden_size * dense_base * shape.num_experts_per_token
    flops += 6 * tokens * shape.hidden_size * shape.vocab_size
    attn_base = transformer_base * shape.num_attention_heads * shape.kv_channels  # projection_size
    if shape.window_size is None:
        attn = attn_base * sequence_length
    else:
        attn = 2 * attn_base * shape.window_size * (1 - shape.window_size / 2 / sequence_length)
    return flops + attn, flops + 7 / 6 * attn


def get_tflops(shape: FlopShape, batch_size: int, sequence_length: int, time_per_iteration: float,
               world_size: int, training: bool = True) -> tuple[float, float]:
    model, hardware = flops_per_iteration(shape, batch_size, sequence_length, training)
    ratio = time_per_iteration * world_size * 1e12
    return model / ratio, hardware / ratio


def memory_usage_mib() -> dict[str, float]:
    """get_memory_usage_mib: torch.cuda statistics (all 0 on a machine without CUDA)."""
    if not torch.cuda.is_available():
        return {key: 0.0 for key in _MEMORY_KEYS}
    reserved = torch.cuda.max_memory_reserved() / 2 ** 20
    out = {"allocated": torch.cuda.memory_allocated() / 2 ** 20,
           "max_allocated": torch.cuda.max_memory_allocated() / 2 ** 20,
           "reserved": torch.cuda.memory_reserved() / 2 ** 20, "max_reserved": reserved,
           "global_max_reserved": reserved}
    torch.cuda.reset_peak_memory_stats()
    return out


class LogWriter:
    """Rank-local Fast-LLM logging: stdout and the rank's log file, each line prefixed as upstream."""

    def __init__(self, path: Path | None, rank: int, world_size: int, timestamps: bool = False, stream=None):
        self.rank, self.world_size, self.timestamps = rank, world_size, timestamps
        self.path = path
        self.stream = stream
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        else:
            self._file = None

    def info(self, message: str) -> None:
        line = line_prefix(self.rank, self.world_size, self.timestamps) + message
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
