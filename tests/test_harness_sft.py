"""Tests for the Tulu 3 SFT twin runtime: assets, bundled data + mixer, the open-instruct trainer port.

The fast tests run in-process against the real tokenizer/model/datasets; the ``slow`` ones launch the
real trainer through the real launchers (python, ``accelerate launch --multi_gpu`` on CPU) and compare
the metrics.jsonl curves they write.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.chat_templates import CHAT_TEMPLATES  # noqa: E402
from harness.open_instruct import common, encoding, model_setup  # noqa: E402
from harness.open_instruct import finetune as sft  # noqa: E402
from harness.runtime import checkpoint as ckpt  # noqa: E402
from harness.runtime.hub import HubMap  # noqa: E402
from harness.open_instruct.data import (  # noqa: E402
    MIXER_SHUFFLE_SEED,
    MixerError,
    get_datasets,
    mixer_uses_counts,
    parse_mixer_list,
)
from repro import catalog  # noqa: E402
from repro.twin import assets as twin_assets  # noqa: E402
from repro.twin import runner as twin_runtime  # noqa: E402
from repro.catalog.schema import Arg, TwinGeometry  # noqa: E402

EOS = "<|end_of_text|>"


# ----------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def asset_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("twin-cache")


@pytest.fixture(scope="session")
def assets(asset_cache) -> dict[str, Path]:
    """Both Tulu SFT twins' assets, as the twin command builds them; name -> folder, plus the asset map."""
    out: dict[str, Path] = {}
    for rid in ("tulu3-8b-sft", "tulu3-70b-sft"):
        recipe = catalog.get(rid)
        twin_assets.write_asset_map(recipe, asset_cache / f"{rid}.json", asset_cache)
        out.update({name: b.root for name, b in twin_assets.build(recipe, asset_cache).items()})
    out["asset_map"] = asset_cache / "tulu3-8b-sft.json"
    out["tokenizer"] = out["bpe-llama3-2048"]
    return out


@pytest.fixture(scope="session")
def hub(assets) -> HubMap:
    return HubMap.load(assets["asset_map"])


@pytest.fixture(scope="session")
def tulu_tokenizer(assets):
    """The twin tokenizer as the trainer prepares it: <pad> added, tulu template set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["llama-3.1-8b-twin"])
    model_setup.add_pad_token_like_upstream(tok)
    model_setup.apply_chat_template_choice(tok, "tulu", add_bos=False)
    return tok


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------
# assets


def test_tokenizer_and_models_are_shaped_like_llama_3_1(assets):
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(assets["tokenizer"])
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) == 2048 and tok.pad_token is None
    assert tok("hi there").input_ids[0] == tok.bos_token_id  # plain encode adds BOS, like Llama-3
    assert "<|start_header_id|>" in tok.chat_template  # its own template is the Llama-3 one
    for folder, heads, kv in (("llama-3.1-8b-twin", 8, 2), ("llama-3.1-70b-twin", 16, 2)):
        cfg = AutoConfig.from_pretrained(assets[folder])
        assert cfg.architectures == ["LlamaForCausalLM"]
        assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (heads, kv)
        assert cfg.head_dim * heads == cfg.hidden_size  # what transformers 4.43.4 (the pin) assumes
        assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["rope_theta"] == 500000.0
        assert cfg.tie_word_embeddings is False and cfg.hidden_act == "silu" and cfg.rms_norm_eps == 1e-5


# ----------------------------------------------------------------------------------------------------
# tulu template and label masking


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "Add 4."},
    {"role": "assistant", "content": "5 + 4 = 9."},
]


def test_tulu_template_renders_like_upstream(tulu_tokenizer):
    text = tulu_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|system|>\nBe brief.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n2 + 3 = 5."
        + EOS
        + "\n<|user|>\nAdd 4.\n<|assistant|>\n5 + 4 = 9."
        + EOS
    )
    ids = encoding.encode_sft_example({"messages": CONVERSATION}, tulu_tokenizer, None)["input_ids"]
    assert ids[0] != tulu_tokenizer.bos_token_id  # no BOS: the tulu template has no {{ bos_token }}
    assert tulu_tokenizer.decode(ids) == text
    assert CHAT_TEMPLATES["tulu"].count("eos_token") == 2


def labelled_spans(example: dict, tokenizer) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    spans, current = [], []
    for token, label in zip(example["input_ids"].tolist(), example["labels"].tolist()):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_labels_cover_exactly_assistant_content_and_eos(tulu_tokenizer, hub):
    example = encoding.encode_sft_example({"messages": CONVERSATION}, tulu_tokenizer, None)
    assert labelled_spans(example, tulu_tokenizer) == ["2 + 3 = 5." + EOS, "5 + 4 = 9." + EOS]
    # ... and on every bundled row (system prompts, multi-turn): "<|assistant|>\n" and the "\n" after
    # eos are masked, the assistant content and its eos are labelled.
    for line in Path(hub.datasets["allenai/tulu-3-sft-mixture"]).read_text().splitlines():
        messages = json.loads(line)["messages"]
        example = encoding.encode_sft_example({"messages": messages}, tulu_tokenizer, None)
        expected = [m["content"] + EOS for m in messages if m["role"] == "assistant"]
        assert labelled_spans(example, tulu_tokenizer) == expected


def test_truncation_and_fully_masked_rows(tulu_tokenizer):
    example = encoding.encode_sft_example({"messages": CONVERSATION}, tulu_tokenizer, 12)
    assert len(example["input_ids"]) == 12
    assert not (example["labels"] != -100).any()  # cut before any assistant token: upstream drops it


# ----------------------------------------------------------------------------------------------------
# dataset_mixer_list semantics


def test_mixer_values_fraction_vs_count():
    assert parse_mixer_list(["a", "1.0", "b", "0.5"]) == {"a": 1.0, "b": 0.5}
    assert parse_mixer_list(["a", "1", "b", "20"]) == {"a": 1, "b": 20}
    assert not mixer_uses_counts({"a": 1, "b": 0.5})  # nothing > 1: "1" is a fraction (all rows)
    assert mixer_uses_counts({"a": 1, "b": 20})  # any > 1: all counts, "1" is one row
    with pytest.raises(MixerError):
        mixer_uses_counts({"a": 0.5, "b": 20})  # fractions and counts cannot mix
    with pytest.raises(MixerError):
        parse_mixer_list(["a", "1.0", "b"])


def test_mixer_selects_after_shuffle_seed_42(hub, tmp_path):
    from datasets import load_dataset

    arith, know = hub.datasets["twin/arithmetic"], hub.datasets["twin/knowledge"]
    mixed = get_datasets(["twin/arithmetic", "0.5", "twin/knowledge", "0.25"], hub.datasets, keep_ids=True)[
        "train"
    ]
    shuffled = [
        load_dataset("json", data_files=p, split="train").shuffle(seed=MIXER_SHUFFLE_SEED)
        for p in (arith, know)
    ]
    assert len(mixed) == int(0.5 * 64) + int(0.25 * 64)
    assert mixed["id"] == shuffled[0]["id"][:32] + shuffled[1]["id"][:16]
    counts = get_datasets(["twin/arithmetic", "1", "twin/knowledge", "5"], hub.datasets, keep_ids=True)[
        "train"
    ]
    assert counts["id"] == shuffled[0]["id"][:1] + shuffled[1]["id"][:5]
    everything = get_datasets(["twin/arithmetic", "1"], hub.datasets, save_data_dir=str(tmp_path / "mix"))[
        "train"
    ]
    assert len(everything) == 64 and everything.column_names == ["messages"]  # id dropped, as upstream
    assert (tmp_path / "mixmixed_ds_train.json").is_file()  # upstream's no-separator file name


# ----------------------------------------------------------------------------------------------------
# loss reductions and the logged train_loss


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")
def test_sum_and_mean_loss_match_a_hand_computation(assets, tulu_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    model = AutoModelForCausalLM.from_pretrained(assets["llama-3.1-8b-twin"], dtype=torch.float32)
    emb = model_setup.resize_embeddings_like_upstream(model, tulu_tokenizer)
    assert emb == 2056 and emb % 8 == 0  # 2048 + <pad> -> next multiple of 8, like 128256 -> 128264
    rows = [
        encoding.encode_sft_example({"messages": CONVERSATION}, tulu_tokenizer, None),
        encoding.encode_sft_example({"messages": CONVERSATION[1:3]}, tulu_tokenizer, None),  # shorter: padded
    ]
    batch = DataCollatorForSeq2Seq(tokenizer=tulu_tokenizer, model=model, padding="longest")(rows)
    with torch.no_grad():
        total = sft.compute_loss(model, batch, "sum", emb)
        mean = sft.compute_loss(model, batch, "mean", emb)
        logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)
    manual, count = 0.0, 0
    for b in range(2):
        for t in range(batch["labels"].shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target != -100:
                manual -= float(logprobs[b, t, target])
                count += 1
    assert math.isclose(float(total), manual, rel_tol=1e-5)
    assert math.isclose(float(mean), manual / count, rel_tol=1e-5)  # mean = token mean of the micro-batch


class _GatherDouble:
    """Stands in for accelerate's gather across 2 processes (test double for the arithmetic only)."""

    def __init__(self, per_rank):
        self.per_rank = per_rank

    def gather(self, _tensor):
        import torch

        return torch.tensor(self.per_rank)


def test_logged_train_loss_is_gathered_mean_over_ga_and_logging_steps():
    args = sft.FlatArguments(gradient_accumulation_steps=2, logging_steps=1)
    # rank 0 summed 100 + 140 over its 2 micro-batches, rank 1 80 + 60: mean micro-batch loss 95
    assert common.logged_train_loss(_GatherDouble([240.0, 140.0]), None, args) == 95.0


def test_scheduler_depends_only_on_effective_batch():
    """1 process x GA 4 and 2 processes x GA 2 (accelerate ticks twice per step) give the same LRs."""
    import torch

    def lrs(processes: int, ga: int) -> list[float]:
        args = sft.FlatArguments(
            gradient_accumulation_steps=ga, learning_rate=1e-3, warmup_ratio=0.1, num_train_epochs=2
        )
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched, _ = common.make_scheduler(opt, args, processes, unprepared_batches=40)
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            for _ in range(processes):
                sched.step()
        return out

    assert lrs(1, 4) == lrs(2, 2)


# ----------------------------------------------------------------------------------------------------
# flags, bad input, checkpoints


def test_flag_defaults_are_upstreams():
    args = sft.parse_args(["--model_name_or_path", "m", "--dataset_mixer_list", "d.jsonl", "1.0"])
    assert (args.per_device_train_batch_size, args.learning_rate, args.num_train_epochs) == (8, 2e-5, 2)
    assert (args.reduce_loss, args.warmup_ratio, args.seed, args.clip_grad_norm) == ("mean", 0.03, 42, -1)
    assert (
        args.push_to_hub
        and args.try_launch_beaker_eval_jobs
        and args.use_slow_tokenizer
        and args.use_flash_attn
    )
    assert (
        args.chat_template_name == "tulu" and args.keep_last_n_checkpoints == 3 and args.logging_steps is None
    )
    flags = sft.parse_args(
        [
            "--model_name_or_path",
            "m",
            "--train_file",
            "x.jsonl",
            "--use_slow_tokenizer",
            "--with_tracking",
            "--push_to_hub",
            "False",
            "--no_try_launch_beaker_eval_jobs",
            "--report_to",
            "wandb",
        ]
    )
    assert flags.use_slow_tokenizer and flags.with_tracking and not flags.push_to_hub
    assert not flags.try_launch_beaker_eval_jobs and flags.report_to == ["wandb"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--model_name_or_path", "m", "--bogus_flag", "1"],
        ["--model_name_or_path", "m", "--dataset_mixer_list", "/nonexistent/data.jsonl", "1.0"],
        ["--model_name_or_path", "/nonexistent/model", "--dataset_mixer_list", "twin/arithmetic", "1.0"],
        ["--model_name_or_path", "m", "--train_file", "x.jsonl", "--push_to_hub", "False"],  # upstream check
        ["--model_name_or_path", "m", "--train_file", "x.jsonl", "--reduce_loss", "max"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys, monkeypatch):
    monkeypatch.delenv("REPRO_TWIN_CACHE", raising=False)
    monkeypatch.delenv("REPRO_TWIN_ASSET_MAP", raising=False)
    assert sft.run_main(sft.PROG, sft.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("open_instruct_sft: error:") and "Traceback" not in err


def test_script_path_reports_unknown_flag_without_traceback():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "harness" / "open_instruct" / "finetune.py"), "--nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--nope" in proc.stderr


def test_checkpoint_choice_and_resume_position(tmp_path):
    for name in ("step_9", "step_10", "epoch_0", "step_12"):
        (tmp_path / name).mkdir()
        if name != "step_12":  # not COMPLETED: a checkpoint killed while saving
            (tmp_path / name / "COMPLETED").write_text("COMPLETED")
    assert common.last_completed_checkpoint(str(tmp_path)) == str(
        tmp_path / "step_10"
    )  # numeric, not "9" > "10"
    assert common.resume_point(str(tmp_path / "step_10"), 4, 3) == common.ResumePoint(2, 10, 6)
    assert common.resume_point(str(tmp_path / "epoch_0"), 4, 3) == common.ResumePoint(1, 4, 0)


# ----------------------------------------------------------------------------------------------------
# slow: real launches of the real trainer


class TwinRuns:
    """Launch each named twin configuration once per session and keep its metrics curve."""

    #: name -> (processes, per-device batch, reduce_loss)
    CONFIGS = {
        "sum_1x1xga4": (1, 1, "sum"),
        "sum_2x1xga2": (2, 1, "sum"),
        "mean_1x1xga4": (1, 1, "mean"),
        "mean_1x4xga1": (1, 4, "mean"),
    }

    def __init__(self, root: Path, asset_map: Path):
        self.root, self.asset_map, self.done = root, asset_map, {}

    def command(self, name: str, out: Path, processes: int, per_device: int, reduce: str):
        """The recipe's own twin command (repro.twin.runner), at this layout, on 40 rows."""
        flags = {"--max_train_samples": "40", "--warmup_ratio": "0.1", "--checkpointing_steps": "4",
                 "--reduce_loss": reduce}
        geometry = TwinGeometry(processes=processes, per_device=per_device,
                                grad_accum=4 // (processes * per_device))
        run = twin_runtime.prepare(catalog.get("tulu3-8b-sft"), out, geometry=geometry,
                                   extra=[Arg(flag=k, values=(v,)) for k, v in flags.items()])
        return run.argv, run.env

    def launch(self, name: str, out: Path, env_extra: dict | None = None, config: str | None = None):
        cmd, env = self.command(name, out, *self.CONFIGS[config or name])
        proc = subprocess.run(
            cmd, env={**env, **(env_extra or {})}, capture_output=True, text=True, timeout=300
        )
        return proc, out / "train" / "sft_8b" / "metrics.jsonl"

    def get(self, name: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        if name not in self.done:
            proc, metrics = self.launch(name, self.root / name)
            assert proc.returncode == 0, proc.stderr[-3000:]
            self.done[name] = (proc, [json.loads(line) for line in metrics.read_text().splitlines()])
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, assets) -> TwinRuns:
    return TwinRuns(tmp_path_factory.mktemp("twin-runs"), assets["asset_map"])


def losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records]


@pytest.mark.slow
def test_two_process_launch_really_has_two_processes_and_exits_0(runs):
    proc, records = runs.get("sum_2x1xga2")
    assert "processes: 2 (WORLD_SIZE=2), distributed_type=MULTI_CPU" in proc.stdout
    assert len(records) == 20 and all(r["extra"]["num_processes"] == 2 for r in records)
    assert all("  Step: " in line for line in proc.stdout.splitlines() if "Loss:" in line)
    assert "terminate called" not in proc.stderr  # the gloo exit abort


@pytest.mark.slow
def test_sum_loss_is_invariant_to_process_ga_split_and_negative_control_is_not(runs):
    one, two = losses(runs.get("sum_1x1xga4")[1]), losses(runs.get("sum_2x1xga2")[1])
    assert len(one) == len(two) == 20
    # Same 4 sequences per step, same gradient, same logged loss; only fp32 summation order differs.
    # Sum losses are O(100-200) where one float32 ulp is 1.5e-5, so compare relatively.
    rel = max(abs(a - b) / abs(a) for a, b in zip(one, two))
    assert rel < 1e-6, rel
    # Negative control: per-micro-batch token mean with variable-length rows depends on how the same
    # 4 sequences are grouped (mean of 4 per-sequence means vs token mean of one padded batch of 4).
    m1, m4 = losses(runs.get("mean_1x1xga4")[1]), losses(runs.get("mean_1x4xga1")[1])
    control = max(abs(a - b) / abs(a) for a, b in zip(m1, m4))
    assert control > 1e-3 > 1000 * rel, (control, rel)


@pytest.mark.slow
def test_rerun_is_bit_identical(runs, tmp_path):
    _, first = runs.get("sum_2x1xga2")
    proc, metrics = runs.launch("rerun", tmp_path / "rerun", config="sum_2x1xga2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert losses(again) == losses(first) and [r["grad_norm"] for r in again] == [
        r["grad_norm"] for r in first
    ]


@pytest.mark.slow
def test_kill_after_checkpoint_and_resume_gives_the_same_curve(runs, tmp_path):
    _, reference = runs.get("sum_1x1xga4")
    out = tmp_path / "killed"
    proc, metrics = runs.launch("killed", out, {ckpt.KILL_AFTER_STEP_ENV: "5"}, config="sum_1x1xga4")
    # died after step 5 (the launcher reports the worker's SIGKILL as its own failure)
    assert proc.returncode != 0 and len(metrics.read_text().splitlines()) == 5
    assert (out / "train" / "sft_8b" / "step_4" / "COMPLETED").is_file()
    proc, metrics = runs.launch("resumed", out, config="sum_1x1xga4")  # same command: auto-resume
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resumed from checkpoint:" in proc.stdout and "step_4" in proc.stdout
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    keys = ("step", "loss", "lr", "grad_norm", "tokens")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in reference]
    assert [r["extra"]["total_tokens"] for r in resumed] == [r["extra"]["total_tokens"] for r in reference]
    assert not list((out / "train" / "sft_8b").glob("step_*"))  # upstream deletes checkpoints at the end
