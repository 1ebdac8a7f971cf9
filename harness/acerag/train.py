"""Twin of ``python -m main.train_compressive_encoder`` (VectorSpaceLab/LightRAG @bce608d1, AceRAG/).

Run by torchrun exactly as the published commands run the upstream module.  Same dataclasses, flag
names and defaults (ModelArgs, TaskArgs, TrainingArgs), same HF Trainer (``CompressiveEncoderTrainer``:
``_save`` writes only ``compressive_encoder/``), same data path:

* pt: ``{"text"}`` rows, kept iff ``min_length < tokens < max_length``, labels = input ids, batch size 1.
* ft: files resampled to ``int(train_num_per_data x data_splits[i])`` rows (train_test_split down, whole
  repetitions + a shuffled remainder up), QA rows turned into a conversation over the first 5 docs, a
  ratio per sample from ``random.choice(comp_candidates)``, truncation, chunking and selection as
  ``harness.acerag.compress`` documents, labels on the answer only.

DEVIATION (declared in the twin blocks): upstream maps the ft encoding with ``num_proc=32`` (datasets caps it at
the row count), and CPython reseeds ``random`` from os.urandom in every forked worker (random.py registers
``_inst.seed`` at fork), so the published run's per-row ratio and position draws are unseeded: two builds of the
same 32 LongAlpaca rows in the pinned environment drew different ratios (measured). The twin runs the map
in-process over the same ``MAP_NUM_PROC`` contiguous shards (datasets' shard boundaries) and seeds shard r with
``random.seed(r)``; the upstream run at twin scale seeds its workers the same way (repro/upstream/shims/
map_shard_seed, declared in twin.upstream.cpu_changes), so both draw the same numbers and are compared on them.

DEVIATION: transformers 5 returns a BatchEncoding from ``apply_chat_template(tokenize=True)`` where
4.57.3 returned the id list; the twin takes ``["input_ids"]`` (same ids).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 - HfArgumentParser needs typing.List

if __package__ in (None, ""):  # run as a script path by a launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro.base.errors import ReproError  # noqa: E402

from harness.acerag import compress  # noqa: E402
from harness.acerag.data import COMPRESSION_INSTRUCTION, QA_PROMPT, QA_RETRIEVAL_NUM  # noqa: E402

PROG = "main.train_compressive_encoder"
#: upstream's num_proc of the ft map (its shard boundaries); DEVIATION: each shard seeded, see the module docstring.
MAP_NUM_PROC = 32
TWIN_REPORT = "acerag_twin.json"

try:
    from transformers import TrainingArguments
except ImportError:  # the twin extra is absent: the module still imports for the pure tests
    TrainingArguments = object  # type: ignore[misc,assignment]


@dataclass
class ModelArgs:
    model_name_or_path: str = field(default="wcyno23/AceRAG-Llama2-7b")
    language_model_name_or_path: str = field(default="meta-llama/Llama-2-7b-chat-hf")
    tokenizer_name: Optional[str] = field(default=None)
    window_mode: bool = field(default=False)
    lm_max_length: int = field(default=4096)
    encoder_name_or_path: str = field(default=None)
    encoder_num_hidden_layers: int = field(default=8)
    embedding_model_name_or_path: str = field(default=None)
    window: int = field(default=1024)
    encoder_max_length: int = field(default=4096)
    comp_candidates: List[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    attn_implementation: str = field(default="flash_attention_2")
    dtype: str = field(default="bfloat16")
    device_map: Optional[str] = field(default=None)
    pretraining_down_scaling_method: str = field(default="stride")
    use_safetensors: bool = field(default=False)
    lora_tune: bool = field(default=False)
    resume_from_ckpt: str = field(default=None)
    cache_dir: Optional[str] = field(default=None)
    config_name: Optional[str] = field(default=None)


@dataclass
class TaskArgs:
    stage: str = field(default="pt")
    data_files: List[str] = field(default_factory=lambda: [])
    min_length: Optional[int] = field(default=None)
    max_length: Optional[int] = field(default=None)
    train_num_per_data: Optional[int] = field(default=None)
    down_scaling_method: Optional[str] = field(default="stride")
    data_splits: List[float] = field(default_factory=list)


@dataclass
class TrainingArgs(TrainingArguments):
    learning_rate: float = field(default=1e-4)
    warmup_ratio: float = field(default=0.1)
    num_train_epochs: float = field(default=1)
    per_device_train_batch_size: int = field(default=1)
    bf16: bool = field(default=True)
    output_dir: str = field(default="data/outputs/test")
    overwrite_output_dir: bool = field(default=False)
    dataloader_num_workers: int = field(default=32)
    remove_unused_columns: bool = field(default=True)
    save_strategy: str = field(default="epoch")
    logging_steps: int = field(default=50)
    report_to: Optional[str] = field(default="none")
    negatives_cross_device: bool = field(default=False)
    temperature: Optional[float] = field(default=0.02)
    fix_position_embedding: bool = field(default=False)
    pooling_method: str = field(default="cls")
    normalized: bool = field(default=True)
    enable_token_level_retrieval: bool = field(default=False)
    gradient_checkpointing_kwargs: Optional[dict] = field(default_factory=lambda: {"use_reentrant": False})

    def __post_init__(self):
        # DEVIATION: transformers 5 dropped warmup_ratio; its fractional warmup_steps is the same ceil(steps x r)
        if self.warmup_ratio and not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio
        # DEVIATION: without a usable GPU the Trainer must be told (use_cpu), or it sizes DeepSpeed's
        # train_batch_size for one process while torchrun/deepspeed started several
        from repro.base.device import cuda_usable

        if not cuda_usable():
            self.use_cpu = True
        super().__post_init__()


# --- argument parsing with one-line errors -------------------------------------------------------


def parse_args(argv: Sequence[str] | None):
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):  # argparse would print usage and exit 2
            raise ReproError(f"{message} (see '{PROG} --help')")

    parser = Parser([ModelArgs, TaskArgs, TrainingArgs], prog=PROG)
    try:
        return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    except ValueError as exc:  # TrainingArguments.__post_init__ refusals
        raise ReproError(f"{' '.join(str(exc).split())[:400]}") from None


def str_to_torch_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ReproError(f"--dtype {name!r}: expected one of {', '.join(table)}")
    return table[name]


# --- input checks ------------------------------------------------------------------------------


def check_encoder_folder(path: str, use_safetensors: bool, flag: str = "--encoder_name_or_path") -> None:
    """One-line errors for what a previous stage can leave behind: nothing, a corrupt or a .bin-less folder."""
    p = Path(path)
    if not p.is_dir():
        hint = ""
        if p.name == compress_subdir():
            hint = (" (the previous stage's checkpoint-*/compressive_encoder is missing: the prelude's"
                    " `ls -d BASE/checkpoint-*` found no checkpoint; run the upstream stage first)")
        raise ReproError(f"{flag} {path}: no such folder{hint}")
    config = p / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReproError(f"{flag} {path}: config.json is missing or not JSON ({type(exc).__name__})") from None
    has_safe = any(p.glob("*.safetensors"))
    has_bin = (p / "pytorch_model.bin").is_file() or any(p.glob("pytorch_model-*.bin"))
    if use_safetensors and not has_safe:
        raise ReproError(f"{flag} {path}: --use_safetensors True but the folder holds no *.safetensors")
    if not use_safetensors and not has_bin:
        raise ReproError(
            f"{flag} {path}: no pytorch_model.bin and --use_safetensors is False (from_pretrained then "
            f"ignores {'model.safetensors' if has_safe else 'any weights'}); the stages that load a saved "
            "compressive_encoder/ pass --use_safetensors True"
        )


def compress_subdir() -> str:
    from harness.acerag.model import ENCODER_SUBDIR  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    return ENCODER_SUBDIR


def resolve_paths(model_args: ModelArgs, hub) -> tuple[str, str]:
    lm = hub.model(model_args.language_model_name_or_path, "--language_model_name_or_path")
    name = model_args.encoder_name_or_path
    if not name:
        raise ReproError("--encoder_name_or_path is required by the twin (upstream trains no encoder without it)")
    enc = hub.models.get(name, name)
    check_encoder_folder(enc, model_args.use_safetensors)
    return lm, enc


# --- data ---------------------------------------------------------------------------------------


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, enable_thinking=False
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_with_labels(tokenizer, messages: list[dict]) -> dict:
    """Full conversation ids; labels on the tokens after the user part's generation prompt (Data.encode_with_labels)."""
    full = chat_ids(tokenizer, messages, False)
    user = chat_ids(tokenizer, messages[:-1], True)
    return {"input_ids": full, "labels": [-100] * len(user) + full[len(user) :]}


def encode_ft_row(conversations: list[dict], tokenizer, args: ModelArgs, task: TaskArgs, instruction: str | None):
    """One row of encode_instruction_tuning_data, or None when the length filter drops it."""
    ratio = random.choice(args.comp_candidates)
    prompt = conversations[0]["prompt"]
    wo = encode_with_labels(tokenizer, [{"role": "user", "content": prompt}, *conversations[1:]])
    filled = prompt.replace(compress.CONTEXT_TAG, conversations[0]["context"])
    w = encode_with_labels(tokenizer, [{"role": "user", "content": filled}, *conversations[1:]])
    if not compress.keep_by_length(len(w["input_ids"]), task.min_length, task.max_length):
        return None
    ti = tokenizer.encode(instruction, add_special_tokens=False) if instruction else None
    s = compress.encode_finetune_sample(
        wo["input_ids"], wo["labels"], w["input_ids"], w["labels"],
        ratio=ratio, lm_max_length=args.lm_max_length, encoder_max_length=args.encoder_max_length,
        bos_token_id=tokenizer.bos_token_id, method=task.down_scaling_method, task_instruction_ids=ti,
    )
    return {"input_ids": s.input_ids, "encoder_input_ids": s.encoder_input_ids, "ph_indices": s.ph_indices,
            "encoder_indices": s.encoder_indices, "labels": s.labels, "length": len(s.input_ids), "ratio": ratio,
            "truncated": int(s.truncated)}


def contiguous_shards(n: int, num_proc: int) -> list[range]:
    """datasets' ``shard(contiguous=True)`` boundaries for ``min(num_proc, n)`` shards."""
    k = max(1, min(num_proc, n))
    div, mod = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        end = start + div + (1 if i < mod else 0)
        out.append(range(start, end))
        start = end
    return out


def forked_map(rows: Sequence[Any], fn: Callable[[Any], Any], num_proc: int) -> list[Any]:
    """Map like datasets' forked pool with each worker's ``random`` seeded by its shard rank (upstream's workers
    draw from os.urandom, see the module docstring); the parent's state is untouched, as a fork leaves it."""
    state = random.getstate()
    out = []
    for rank, shard in enumerate(contiguous_shards(len(rows), num_proc)):
        random.seed(rank)
        out.extend(fn(rows[i]) for i in shard)
    random.setstate(state)
    return [r for r in out if r is not None]


def qa_to_conversation(row: dict, retrieval_num: int = QA_RETRIEVAL_NUM) -> dict:
    prompt = QA_PROMPT.replace(compress.INPUT_TAG, row["query"])
    docs = row["key"][:retrieval_num]
    context = "\n\n".join(f"Doc {i + 1}: {d}" for i, d in enumerate(docs))
    return {"conversations": [
        {"content": prompt.replace(compress.CONTEXT_TAG, context), "role": "user", "prompt": prompt, "context": context},
        {"content": row["answers"][0], "role": "assistant"},
    ]}


def resample(dataset, splits: Sequence[float], per_data: int | None, seed: int, idx: int):
    """resample_dataset: train_test_split down, whole repetitions + shuffled remainder up."""
    from datasets import concatenate_datasets

    how, target = compress.resample_target(per_data, splits, idx, len(dataset))
    if how == "down":
        return dataset.train_test_split(test_size=target, seed=seed)["test"]
    if how == "up":
        reps, rem = divmod(target, len(dataset))
        out = dataset
        for _ in range(reps - 1):
            out = concatenate_datasets([out, dataset])
        if rem:
            out = concatenate_datasets([out, dataset.shuffle(seed=seed).select(range(rem))])
        return out
    return dataset


def load_json_dataset(path: str, hub):
    import datasets

    local = hub.datasets.get(path, path)
    if not os.path.isfile(local):
        raise ReproError(f"--data_files {path}: no such file")
    return datasets.load_dataset("json", data_files=local, split="train")


def build_dataset(model_args: ModelArgs, task: TaskArgs, training_args, tokenizer, hub):
    import datasets

    if not task.data_files:
        raise ReproError("--data_files: no file given")
    if task.stage not in ("pt", "ft"):
        raise ReproError(f"--stage {task.stage!r}: expected pt or ft")
    parts = []
    for idx, path in enumerate(task.data_files):
        name = os.path.splitext(os.path.basename(path))[0]
        ds = load_json_dataset(path, hub)
        if task.stage == "pt":
            if task.min_length is None or task.max_length is None:
                raise ReproError("--min_length and --max_length are required for --stage pt (upstream compares with them)")
            rows = []
            for i, text in enumerate(ds["text"]):
                ids = tokenizer(text)["input_ids"]
                if compress.keep_by_length(len(ids), task.min_length, task.max_length):
                    rows.append({"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids),
                                 "length": len(ids), "index": i})
        else:
            ds = resample(ds, task.data_splits, task.train_num_per_data, training_args.seed, idx)
            if "key" in ds.column_names:
                ds = datasets.Dataset.from_list([qa_to_conversation(r) for r in ds])
            instruction = COMPRESSION_INSTRUCTION.get(name)
            convs = list(ds["conversations"])
            rows = forked_map(convs, lambda c: encode_ft_row(c, tokenizer, model_args, task, instruction), MAP_NUM_PROC)
            for i, r in enumerate(rows):
                r["index"] = i
        if rows:
            parts.append(datasets.Dataset.from_list(rows))
    if not parts:
        raise ReproError(f"no row of {', '.join(task.data_files)} passes {task.min_length} < tokens < {task.max_length}")
    return datasets.concatenate_datasets(parts)


# --- collators (data.py DefaultDataCollator / SFTDataCollator) ------------------------------------


def pad_left(rows: list[list[int]], value: int) -> list[list[int]]:
    n = max(len(r) for r in rows)
    return [[value] * (n - len(r)) + list(r) for r in rows]


@dataclass
class WindowCollator:
    """Window mode: input_ids / labels / attention_mask padded on the tokenizer's side (left)."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        return {
            "input_ids": torch.tensor(pad_left([b["input_ids"] for b in batch], self.pad_token_id)),
            "attention_mask": torch.tensor(pad_left([b["attention_mask"] for b in batch], 0)),
            "labels": torch.tensor(pad_left([b["labels"] for b in batch], -100)),
        }


@dataclass
class SFTCollator:
    """Fine-tuning: left padding for LM and encoder inputs, placeholder/selection indices shifted to match."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        ids = [b["input_ids"] for b in batch]
        n = max(len(x) for x in ids)
        ph = [[i + n - len(x) for i in b["ph_indices"]] for x, b in zip(ids, batch)]
        enc_ids, enc_idx = [], []
        for b in batch:
            for chunk, idx in zip(b["encoder_input_ids"], b["encoder_indices"]):
                if idx:
                    enc_ids.append(chunk)
                    enc_idx.append(idx)
        out = {
            "input_ids": torch.tensor(pad_left(ids, self.pad_token_id)),
            "attention_mask": torch.tensor(pad_left([[1] * len(x) for x in ids], 0)),
            "labels": torch.tensor(pad_left([b["labels"] for b in batch], -100)),
            "ph_indices": ph if sum(len(x) for x in ph) else None,
        }
        if enc_ids:
            m = max(len(x) for x in enc_ids)
            out["encoder_input_ids"] = torch.tensor(pad_left(enc_ids, self.pad_token_id))
            out["encoder_attention_mask"] = torch.tensor(pad_left([[1] * len(x) for x in enc_ids], 0))
            out["encoder_indices"] = [[i + m - len(x) for i in idx] for x, idx in zip(enc_ids, enc_idx)]
        else:
            out["encoder_input_ids"] = torch.tensor([])
            out["encoder_attention_mask"] = torch.tensor([])
            out["encoder_indices"] = None
        return out


# --- trainer ------------------------------------------------------------------------------------


def make_trainer_class():
    import torch
    from transformers import Trainer

    from harness.acerag.model import tensor_digest  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    class CompressiveEncoderTrainer(Trainer):
        """Upstream's trainer: ``_save`` writes the encoder only; plus the twin's per-step evidence."""

        lm_digest: str | None = None
        encoder_start: dict | None = None

        def _save(self, output_dir: Optional[str] = None, state_dict=None):
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.model.save(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

        def log(self, logs: dict, *args, **kwargs):
            """Adds lm_changed (0/1 vs the loaded LM, bit for bit), encoder_delta (L2 from the start) and
            comp_ratio (this rank's compressed tokens per spliced state since the last log: the ratio the
            model applied, which a changed --comp_candidates or ratio draw moves)."""
            model = self.model
            if self.lm_digest is not None and "loss" in logs:
                ratio = model.take_comp_ratio()
                if ratio is not None:
                    logs["comp_ratio"] = ratio
                logs["lm_changed"] = float(tensor_digest(model.language_model) != self.lm_digest)
                enc = model.compressive_encoder.state_dict()
                logs["encoder_delta"] = float(
                    sum(((enc[k].float() - v) ** 2).sum() for k, v in self.encoder_start.items()) ** 0.5
                )
            return super().log(logs, *args, **kwargs)

    return CompressiveEncoderTrainer


def main(argv: Sequence[str] | None = None) -> int:
    model_args, task_args, training_args = parse_args(argv)
    from harness.runtime.hub import load_hub_map  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    hub = load_hub_map()
    lm_path, enc_path = resolve_paths(model_args, hub)
    if not model_args.window_mode and task_args.stage == "pt":
        raise ReproError("--window_mode false with --stage pt: the pt data has no conversations (pass --stage ft)")

    import torch
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, set_seed

    from harness.acerag.model import AceRAG, tensor_digest  # lazy: the training stack loads only when a run starts, not for --help or a refusal
    from harness.runtime.hf_trainer import MetricsCallback  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(lm_path)
    if not tokenizer.pad_token_id:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    try:
        model = AceRAG(
            lm_path, enc_path, model_args.encoder_num_hidden_layers,
            window_mode=model_args.window_mode, window=model_args.window, lm_max_length=model_args.lm_max_length,
            encoder_max_length=model_args.encoder_max_length, comp_candidates=model_args.comp_candidates,
            pretraining_down_scaling_method=model_args.pretraining_down_scaling_method,
            dtype=str_to_torch_dtype(model_args.dtype), attn_implementation=model_args.attn_implementation,
            use_safetensors=model_args.use_safetensors,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a cut-off or corrupt weights file
        first = " ".join(str(exc).split())[:300]
        raise ReproError(f"--encoder_name_or_path {enc_path}: cannot load ({type(exc).__name__}: {first})") from None
    from harness.runtime import faults  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    if faults.fault("lm_unfrozen"):  # mutant only: the frozen LM trains with the encoder
        for p in model.language_model.parameters():
            p.requires_grad = True
    if not model_args.window_mode:
        tokenizer.add_tokens([compress.CONTEXT_TAG], special_tokens=True)
    tokenizer.padding_side = "left"

    with training_args.main_process_first():
        dataset = build_dataset(model_args, task_args, training_args, tokenizer, hub)
    collator = (WindowCollator if model_args.window_mode else SFTCollator)(tokenizer.pad_token_id)

    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator,
        callbacks=[MetricsCallback(training_args.output_dir)],
    )
    lm_before = tensor_digest(model.language_model)
    trainer.lm_digest = lm_before
    trainer.encoder_start = {k: v.detach().float().clone() for k, v in model.compressive_encoder.state_dict().items()}
    trainer.train()
    if trainer.is_world_process_zero():
        report = {
            "language_model": lm_path,
            "encoder_source": enc_path,
            "lm_digest_before": lm_before,
            "lm_digest_after": tensor_digest(model.language_model),
            "rows": len(dataset),
            "ratios": sorted(set(dataset["ratio"])) if "ratio" in dataset.column_names else None,
            "truncated_rows": int(sum(dataset["truncated"])) if "truncated" in dataset.column_names else None,
        }
        report["lm_unchanged"] = report["lm_digest_before"] == report["lm_digest_after"]
        Path(training_args.output_dir, TWIN_REPORT).write_text(json.dumps(report, indent=1) + "\n")
    del torch
    return 0


if __name__ == "__main__":
    from harness.runtime.entry import run_main

    sys.exit(run_main(PROG, main))
