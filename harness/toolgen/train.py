"""Twin of ToolGen's ``training/train.py`` (Reason-Wang/ToolGen @6839374), run by the deepspeed launcher.

Same ``TrainingArguments`` subclass (flag names and defaults), same flow: load the tokenizer (adding the
tool tokens when ``--add_virtual_tokens True``), load the chat data (``dataset_nums`` >= rows keeps every
row, else an unseeded ``random.sample`` as upstream), tokenize with the llama-3 template and per-message
loss flags (``harness.toolgen.conversation``), load the model (resize + mean-of-subwords rows for the tool
tokens), HF ``Trainer`` with the DeepSpeed config of the command, then ``tokenizer.save_pretrained`` and
``trainer.save_model`` (``--gather_weights True``) into ``--output_dir``.

HF Trainer semantics are those of transformers 4.48.3 (what ToolGen's unpinned requirement resolved to at
the commit date) where the suite's transformers 5.24 would change the loss or the update:

* ``average_tokens_across_devices`` defaults to False (5.24: True): each rank's loss is its summed
  token cross-entropy over its GA micro-batches divided by ITS label-token count; ranks are averaged
  with equal weight.  (5.24 would divide by the global count and multiply by the world size.)
* under DeepSpeed 4.48.3 lets the engine divide the gradient by GA once more (``scale_wrt_gas`` left
  True); 5.24 turns that off (transformers#35808).  The twin passes ``scale_wrt_gas=True`` again.
* ``--warmup_ratio`` (removed in 5.24) is mapped onto 5.24's fractional ``warmup_steps``: both give
  ``ceil(steps x ratio)`` warmup steps.
* the label count: 4.48.3 counts ``labels != -100`` unshifted, 5.24 ``labels[..., 1:]``; a ToolGen
  sequence starts with BOS (never a label), so both counts agree; the twin keeps 5.24's code.

DeepSpeed: the stored configs have no ``gradient_clipping`` key and HF fills only "auto" keys, so the
pinned DeepSpeed 0.16.4 clips nothing (default 0.0) where the suite's 0.19.8 clips at 1.0 (#8068).
DEVIATION: the twin sets ``gradient_clipping`` 0.0 when the key is absent, the pinned default.

DEVIATION: upstream always loads the model in bfloat16 (``torch_dtype=torch.bfloat16``); the twin loads
float32 when ``--bf16`` is False (CPU), bfloat16 otherwise.
DEVIATION: ``transformers.set_seed(--seed)`` before the model is loaded and resized (upstream draws the
``mean_resizing`` output rows unseeded, so stage 1 is not bit-reproducible; a golden needs it to be).
DEVIATION: a stage whose data contains tool tokens the tokenizer does not know as single tokens
(``--add_virtual_tokens False`` on the base model) is refused instead of training on split subwords.

Test hook: ``REPRO_TWIN_FAULT=tool_labels_dropped`` masks the tool-token label positions (-100), as a
template bug that trains only the ``<|eot_id|>`` after each tool token would: the loss still falls, and only
the tool-token accuracy checks catch it.

Extra per-step figure: ``tool_token_acc``, the share of tool-token label positions (all ranks) where
the model's argmax is the label, since the previous log.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional  # noqa: UP035 - HfArgumentParser needs typing.List

if __package__ in (None, ""):  # the deepspeed launcher runs a script path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro.base.errors import ReproError  # noqa: E402

from harness.runtime import faults  # noqa: E402
from harness.runtime.launch_config import read_deepspeed_config  # noqa: E402
from harness.toolgen import vtokens  # noqa: E402
from harness.toolgen.conversation import CausalLMCollator, tokenize_conversation  # noqa: E402
from repro.base.device import cuda_usable  # noqa: E402

PROG = "train.py"
PROJECT_CONFIG = "src/configs/project_config.json"
TOOL_TOKEN = re.compile(r"<<[^<>]+>>")
#: deepspeed 0.16.4 runtime/constants.py GRADIENT_CLIPPING_DEFAULT (0.19.8: 1.0)
PINNED_GRADIENT_CLIPPING = 0.0

try:
    import transformers
except ImportError:  # pure tests without the twin extra
    transformers = None


_Base = transformers.TrainingArguments if transformers is not None else object


@dataclass
class TrainingArguments(_Base):  # type: ignore[misc,valid-type]
    model_name_or_path: str = field(default="")
    chat: bool = False
    architecture: str = field(default="causal")
    flash_attention: bool = False
    data_path: str = field(default="")
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    resume_training: bool = False
    per_device_train_batch_size = 8
    max_length: int = 2048
    learning_rate: float = 5e-5
    num_train_epochs: int = 3
    gather_weights: bool = True
    datasets: List[str] = field(default_factory=list)
    dataset_nums: List[int] = field(default_factory=int)
    template: str = field(default="llama-3")
    add_virtual_tokens: bool = False
    # transformers 4.48.3's default (the suite's 5.24 defaults to True), see the module docstring
    average_tokens_across_devices: bool = field(default=False)
    # 4.48.3's flag, gone in 5.24 (whose warmup_steps < 1 is the same ratio, ceil(steps x ratio))
    warmup_ratio: float = field(default=0.0)

    def __post_init__(self):
        clip_default = False
        if isinstance(self.deepspeed, str) and self.deepspeed:
            self.deepspeed = read_deepspeed_config(self.deepspeed)
            clip_default = "gradient_clipping" not in self.deepspeed
        if self.warmup_ratio and not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio
        # DEVIATION: without a usable GPU the Trainer must be told (use_cpu), or it sizes DeepSpeed's
        # train_batch_size for one process while the launcher started several
        from repro.base.device import cuda_usable

        if not cuda_usable():
            self.use_cpu = True
        super().__post_init__()
        if clip_default:
            # DEVIATION: DeepSpeed 0.16.4's default (no clipping) for a config without the key; set after
            # the HF consistency check, which (as in 4.48.3) never compared an absent key with max_grad_norm
            self.hf_deepspeed_config.config["gradient_clipping"] = PINNED_GRADIENT_CLIPPING


def parse_args(argv: Sequence[str] | None) -> TrainingArguments:
    class Parser(transformers.HfArgumentParser):
        def error(self, message):
            raise ReproError(f"{message} (see '{PROG} --help')")

    try:
        (args,) = Parser(TrainingArguments, prog=PROG).parse_args_into_dataclasses(
            args=list(argv) if argv is not None else None)
    except ValueError as exc:
        raise ReproError(" ".join(str(exc).split())[:400]) from None
    return args


def set_project(project_config: str = PROJECT_CONFIG) -> None:
    try:
        config = json.loads(Path(project_config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReproError(f"{project_config}: train.py reads it from the working directory ({type(exc).__name__})") from None
    for key in ("WANDB_PROJECT", "WANDB_ENTITY"):
        if key in config:
            os.environ[key] = config[key]


def load_chat_data(paths: Sequence[str], nums: Sequence[int], hub) -> list[list[dict]]:
    """data/utils.py::load_chat_data: whole file unless n <= rows (then an unseeded random.sample)."""
    if isinstance(nums, int) or len(paths) != len(nums):
        raise ReproError(f"--datasets has {len(paths)} file(s) but --dataset_nums {nums!r} (one count per file)")
    out = []
    for path, n in zip(paths, nums):
        local = hub.datasets.get(path, path)
        try:
            data = json.loads(Path(local).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReproError(f"--datasets {path}: cannot read ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise ReproError(f"--datasets {path}: not a JSON list ({exc})") from None
        if n <= len(data):
            data = random.sample(data, n)
        try:
            out.extend(row["conversations"] for row in data)
        except (KeyError, TypeError):
            raise ReproError(f"--datasets {path}: rows must be {{\"conversations\": [...]}}") from None
    return out


def check_tool_tokens(conversations: Sequence[list[dict]], tokenizer, args) -> None:
    """Refuse data whose trained tool tokens are not single tokens (e.g. stage 1 without add_virtual_tokens)."""
    vocab = tokenizer.get_vocab()
    for i, conv in enumerate(conversations):
        for m in conv:
            if not m.get("loss"):
                continue
            for tok in TOOL_TOKEN.findall(m.get("content") or m.get("value") or ""):
                if tok not in vocab:
                    raise ReproError(
                        f"--datasets {args.datasets[0]} row {i + 1}: tool token {tok!r} is not in the tokenizer of "
                        f"{args.model_name_or_path} (--add_virtual_tokens {args.add_virtual_tokens}); it would be "
                        "trained as subwords. Stage 1 passes --add_virtual_tokens True"
                    )


class ChatDataset:
    """CausalLMChatDataset: tokenizes one conversation per item."""

    def __init__(self, tokenizer, conversations, max_length: int, template: str):
        self.rows = [tokenize_conversation(c, tokenizer, template, max_length) for c in conversations]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def make_trainer_class():
    import torch
    import torch.distributed as dist
    from accelerate.utils import DistributedType
    from transformers import Trainer

    class ToolGenTrainer(Trainer):
        """HF Trainer with 4.48.3's DeepSpeed GA scaling and the tool-token accuracy figure."""

        tool_ids: torch.Tensor | None = None
        _acc = (0, 0)

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            backward = self.accelerator.backward

            def pinned_backward(loss, **kwargs):
                if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
                    kwargs["scale_wrt_gas"] = True  # 4.48.3 left DeepSpeed's own 1/GA in place
                return backward(loss, **kwargs)

            self.accelerator.backward = pinned_backward

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if self.tool_ids is not None:
                with torch.no_grad():
                    labels = inputs["labels"][:, 1:]
                    preds = outputs.logits[:, :-1].argmax(-1)
                    mask = torch.isin(labels, self.tool_ids.to(labels.device))
                    c, t = self._acc
                    self._acc = (c + int((preds[mask] == labels[mask]).sum()), t + int(mask.sum()))
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict, *args, **kwargs):
            if "loss" in logs and self.tool_ids is not None:
                acc = torch.tensor(self._acc, dtype=torch.float64)
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(acc)
                logs["tool_token_acc"] = float(acc[0] / acc[1]) if acc[1] > 0 else 0.0
                self._acc = (0, 0)
            return super().log(logs, *args, **kwargs)

    return ToolGenTrainer


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from harness.runtime.hf_trainer import MetricsCallback  # lazy: the training stack loads only when a run starts, not for --help or a refusal
    from harness.runtime.hub import load_hub_map  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    if args.architecture != "causal" or not args.chat:
        raise ReproError("the twin implements --chat True --architecture causal (the published commands)")
    hub = load_hub_map()
    set_project()
    model_path = hub.model(args.model_name_or_path, "--model_name_or_path")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokens = vtokens.read_virtual_tokens(vtokens.VIRTUAL_TOKENS_FILE) if args.add_virtual_tokens else None
    if tokens:
        vtokens.add_virtual_tokens(tokenizer, tokens)
    conversations = load_chat_data(args.datasets, args.dataset_nums, hub)
    check_tool_tokens(conversations, tokenizer, args)
    dataset = ChatDataset(tokenizer, conversations, args.max_length, args.template)
    if faults.fault("tool_labels_dropped"):  # an unknown name is refused by the registry (runtime/faults.py)
        drop = set(vtokens.tool_token_ids(tokenizer, sorted({t for c in conversations for m in c
                                                             for t in TOOL_TOKEN.findall(m.get("content", ""))})))
        for row in dataset.rows:
            row["labels"] = [-100 if t in drop else t for t in row["labels"]]
    collator = CausalLMCollator(tokenizer)

    # DEVIATION: upstream resizes before the Trainer seeds anything, so the mean_resizing sample of the new
    # output rows (and with it the whole curve) differs run to run; the twin seeds first (--seed, default
    # 42) so that a golden curve can be recorded and compared
    transformers.set_seed(args.seed)
    zero3 = isinstance(args.deepspeed, dict) and args.deepspeed.get("zero_optimization", {}).get("stage") == 3

    if zero3 and not cuda_usable():
        # DEVIATION: with use_cpu the Trainer's setup leaves the process group to accelerate, which starts it
        # only after from_pretrained; ZeRO-3's zero.Init inside from_pretrained then sizes the batch for one
        # process. On a GPU the Trainer calls deepspeed.init_distributed first; the twin does the same on CPU.
        import deepspeed

        deepspeed.init_distributed()
    attn = "flash_attention_2" if args.flash_attention else None
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise ReproError(f"--model_name_or_path {args.model_name_or_path}: cannot load ({' '.join(str(exc).split())[:300]})") from None
    if tokens:
        vtokens.init_virtual_embeddings(model, tokenizer, tokens)
    elif len(tokenizer) > getattr(model.get_input_embeddings().weight, "ds_shape", model.get_input_embeddings().weight.shape)[0]:
        # (under ZeRO-3 the weight is partitioned: its full shape is ds_shape)
        raise ReproError(f"{args.model_name_or_path}: tokenizer has {len(tokenizer)} tokens, the model's embeddings fewer")

    trainer_cls = make_trainer_class()
    trainer = trainer_cls(model, args=args, data_collator=collator, train_dataset=dataset,
                          callbacks=[MetricsCallback(args.output_dir)])
    tool_vocab = vtokens.tool_token_ids(tokenizer, sorted({t for c in conversations for m in c if m.get("loss")
                                                            for t in TOOL_TOKEN.findall(m.get("content", ""))}))
    trainer.tool_ids = torch.tensor(tool_vocab) if tool_vocab else None
    trainer.train(resume_from_checkpoint=args.resume_training or None)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)
    if args.gather_weights:
        trainer.save_model(args.output_dir)
    else:
        trainer.deepspeed.save_checkpoint(args.output_dir)
    return 0


if __name__ == "__main__":
    from harness.runtime.entry import run_main

    sys.exit(run_main(PROG, main))
