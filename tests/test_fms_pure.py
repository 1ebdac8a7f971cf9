"""fms-hf-tuning 3.2.2 semantics that need no training: CLI, published defects, data, masking, logs, MXFP4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.fms import cli, data, file_logger, mxfp4
from repro.lint import fms_published as published
from repro.base.errors import ReproError

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# MXFP4


def test_mxfp4_grid_values_survive_and_codes_roundtrip():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(3, 5, 64)).astype(np.uint8)
    exps = rng.integers(-6, 4, size=(3, 5, 2))
    values = mxfp4.E2M1_VALUES[codes] * np.ldexp(1.0, np.repeat(exps, 32, axis=-1))
    blocks, scales = mxfp4.quantize(values)
    # every block whose largest magnitude is 4 or 6 keeps its scale; the values come back exactly
    back = mxfp4.decode(blocks, scales)
    amax = np.abs(values.reshape(3, 5, 2, 32)).max(-1)
    exact = np.repeat(amax * np.ldexp(1.0, -exps) >= 4, 32, axis=-1)
    assert np.array_equal(back[exact], values[exact].astype(np.float32))
    # decode -> quantize -> decode is a fixed point
    b2, s2 = mxfp4.quantize(back)
    assert np.array_equal(mxfp4.decode(b2, s2), back)


def test_mxfp4_nearest_value_ties_to_even_and_saturates():
    row = np.zeros(32)
    row[:6] = [6.0, 5.0, 1.25, 1.75, 0.25, -2.5]  # amax 6 -> scale 2**0
    blocks, scales = mxfp4.quantize(row[None, :])
    assert scales[0, 0] == 127
    got = mxfp4.decode(blocks, scales)[0, :6].tolist()
    # 5 ties between 4 (code 6, even) and 6 (code 7): even wins; 1.25 -> 1.0 (code 2), 1.75 -> 2.0 (code 4),
    # 0.25 -> 0.0 (code 0), -2.5 -> -2.0 (code 4 with sign)
    assert got == [6.0, 4.0, 1.0, 2.0, 0.0, -2.0]
    assert blocks[0, 0, 0] == (7 | (6 << 4))  # even column in the low nibble


def test_mxfp4_error_bound_and_bad_shapes():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(4, 64)) * 0.02
    back = mxfp4.decode(*mxfp4.quantize(m))
    block_max = np.repeat(np.abs(m.reshape(4, 2, 32)).max(-1), 32, axis=-1)
    assert np.all(np.abs(back - m) <= block_max / 4 + 1e-12)  # half the widest grid gap (2 of 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.ones((2, 33)))
    with pytest.raises(ValueError, match="NaN"):
        mxfp4.quantize(np.full((1, 32), np.nan))


def test_mxfp4_param_layout_matches_transformers_decode():
    torch = pytest.importorskip("torch")
    integ = pytest.importorskip("transformers.integrations.mxfp4")
    rng = np.random.default_rng(2)
    param = rng.normal(size=(2, 64, 96)).astype(np.float32) * 0.05  # [E, in, out] like gate_up_proj
    blocks, scales = mxfp4.quantize_param(param)
    assert blocks.shape == (2, 96, 2, 16) and scales.shape == (2, 96, 2)
    theirs = integ.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    assert tuple(theirs.shape) == param.shape
    assert np.array_equal(theirs.numpy(), mxfp4.decode_param(blocks, scales))


# ---------------------------------------------------------------------------------------------
# CLI and the published commands


def test_cli_drops_unknown_and_resolves_prefixes():
    p = cli.parse(["--model_name_or_path", "m", "--lora_r", "8--lora_alpha", "16", "--peft_method", "LoRA",
                   "--data_config", "d.yaml", "--tracker", "aim", "--target_modules", "all-linear",
                   "--response_template", "\\n### Response:", "--dequantize", "False", "--quantization_method", "mxfp4"])
    assert p.remaining == ["--lora_r", "8--lora_alpha", "16"]
    assert p.lora["lora_alpha"] == 32 and p.lora["r"] == 8 and p.lora["target_modules"] == "all-linear"
    assert p["data_config_path"] == "d.yaml" and p["trackers"] == ["aim"]
    assert p["response_template"] == "\n### Response:"  # DataArguments unescapes
    assert p.mxfp4 == {"dequantize": False}
    assert p["logging_strategy"] == "epoch" and p["torch_dtype"] == "bfloat16" and p["optim"] == "adamw_torch"


def test_cli_ambiguous_prefix_is_one_line_error():
    with pytest.raises(ReproError, match="ambiguous"):
        cli.parse(["--learning", "1e-5"])


@pytest.fixture(scope="module")
def fms_recipes(recipes):
    return {k: v for k, v in recipes.items() if k.startswith("fms-llama2") or k.startswith("fms-gpt-oss")}


def test_published_gpt_oss_runs_lora_alpha_32_intended_16(fms_recipes):
    recipe = fms_recipes["fms-gpt-oss-120b-lora-mxfp4"]
    run = published.published_run(recipe)
    pub = cli.parse(run.trainer_argv)
    want = cli.parse(published.intended_trainer_argv(recipe))
    assert pub.lora["lora_alpha"] == 32 and want.lora["lora_alpha"] == 16
    assert pub.lora["r"] == want.lora["r"] == 8
    assert "8--lora_alpha" in pub.remaining
    verdict = published.judge(recipe)
    fields = {d.field for d in verdict.comparison.differences}
    assert fields == {"lora_alpha", "logging_strategy"}  # ~ vs $HOME is the same path, not a difference


def test_published_single_gpu_commands_lose_their_data(fms_recipes):
    for rid in ("fms-llama2-7b-sft-single-gpu", "fms-llama2-7b-sft-single-gpu-formatter"):
        verdict = published.judge(fms_recipes[rid])
        assert verdict.runs_trainer
        fields = {d.field for d in verdict.comparison.differences}
        assert {"training_data_path", "response_template", "output_dir"} <= fields
        assert any("Training data path has to be set" in n for n in verdict.notes)
        assert " #" in verdict.comparison.dropped


def test_formatter_colon_flag_is_dropped_with_its_value():
    p = cli.parse(["--data_formatter_template:", "### Input: {{input}}", "--response_template", "x"])
    assert p["data_formatter_template"] is None
    assert p.remaining == ["--data_formatter_template:", "### Input: {{input}}"]


def test_published_fsdp_command_never_starts_the_trainer(fms_recipes):
    verdict = published.judge(fms_recipes["fms-llama2-7b-sft-fsdp"])
    assert not verdict.runs_trainer
    assert any("' '" in n and "script" in n for n in verdict.notes)


# ---------------------------------------------------------------------------------------------
# data formats and templates


def test_text_field_and_formatter_texts_end_in_one_eos():
    rows = [{"output": "### Input: a \n\n### Response: b", "input": "a"}]
    texts = data.single_sequence_texts(rows, dataset_text_field="output", data_formatter_template=None,
                                       response_template="\n### Response:", special_tokens={"eos_token": "</s>"},
                                       eos_token="</s>")
    assert texts == ["### Input: a \n\n### Response: b</s>"]
    rows = [{"input": "a", "output": "b"}]
    tpl = "### Input: {{input}} \n\n## Label: {{output}}"
    texts = data.single_sequence_texts(rows, dataset_text_field=None, data_formatter_template=tpl,
                                       response_template="\n## Label:", special_tokens={"eos_token": "</s>"},
                                       eos_token="</s>")
    assert texts == ["### Input: a \n\n## Label: b</s>"]
    tpl_eos = tpl + "{{eos_token}}"
    texts = data.single_sequence_texts(rows, dataset_text_field=None, data_formatter_template=tpl_eos,
                                       response_template="x", special_tokens={"eos_token": "</s>"}, eos_token="</s>")
    assert texts == ["### Input: a \n\n## Label: b</s>"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset_text_field=None, data_formatter_template="{{question}}"), "'question' is undefined"),
    (dict(dataset_text_field=None, data_formatter_template="{{input"), "invalid Jinja"),
    (dict(dataset_text_field="text", data_formatter_template=None), "no such column"),
    (dict(dataset_text_field="output", data_formatter_template="{{input}}"), "mutually exclusive"),
])
def test_bad_templates_are_one_line_errors(kwargs, match):
    with pytest.raises(ReproError, match=match) as exc:
        data.single_sequence_texts([{"input": "a", "output": "b"}], response_template="x",
                                   special_tokens={}, eos_token="</s>", **kwargs)
    assert "\n" not in str(exc.value)


def test_special_tokens_only_without_tokenizer_path():
    llama = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}
    assert data.special_tokens_to_add("meta-llama/Llama-2-7b-hf", "LlamaTokenizerFast", llama) == {}
    added = data.special_tokens_to_add(None, "LlamaTokenizerFast", llama)
    # the Llama branch asks for "<pad>", then the missing-pad rule overwrites it with DEFAULT_PAD_TOKEN
    assert added == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"}
    gpt_oss = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "unk_token": None, "pad_token": "<|endoftext|>"}
    assert data.special_tokens_to_add(None, "PreTrainedTokenizerFast", gpt_oss) == {"unk_token": "<unk>"}


def test_completion_labels_use_last_match_and_pad_values():
    ids = [1, 7, 8, 5, 7, 8, 9, 2, 0, 0]
    labels, found = data.completion_labels(ids, [7, 8], pad_id=0)
    assert found and labels == [-100] * 6 + [9, 2, -100, -100]
    labels, found = data.completion_labels([1, 5, 6, 2], [7, 8], pad_id=0)
    assert not found and labels == [-100] * 4
    # pad == eos: the collator masks by value, so the eos label is lost too
    labels, _ = data.completion_labels([1, 7, 8, 9, 2, 2], [7, 8], pad_id=2)
    assert labels == [-100, -100, -100, 9, -100, -100]


def test_template_matching_nothing_is_an_error():
    with pytest.raises(ReproError, match="matches no row"):
        data.check_template_matches([[1, 2, 3], [4, 5]], [7, 8], "\n### Response:", "train.json")
    assert data.check_template_matches([[1, 7, 8], [4, 5]], [7, 8], "t", "f") == [1]


def test_padding_without_pad_token_fails_like_transformers():
    with pytest.raises(ReproError, match="no pad token"):
        data.pad_batch([{"input_ids": [1, 2]}, {"input_ids": [1]}], None)


# ---------------------------------------------------------------------------------------------
# data configs


def test_recipe_data_config_loads():
    cfg = data.load_data_config(ROOT / "recipes/fms/configs/gpt-oss-data_config.yaml")
    assert cfg.datasets[0].data_paths == ["HuggingFaceH4/Multilingual-Thinking"]
    handler = cfg.datasets[0].data_handlers[0]
    assert handler.name == "tokenize_and_apply_chat_template_with_masking"
    assert handler.arguments["fn_kwargs"] == {"conversation_column_name": "messages"}


@pytest.mark.parametrize("text,match", [
    ("dataprocessor: {type: default}\n", "datasets: missing"),
    ("datasets: []\n", "non-empty list"),
    ("datasets:\n  - name: a\n", r"datasets\[0\].data_paths: missing"),
    ("datasets:\n  - data_paths: x.json\n", "list of strings"),
    ("datasets:\n  - data_paths: [x]\n    data_handlers:\n      - name: tokenise\n        arguments: {}\n",
     "'tokenise' is not a registered data handler"),
    ("datasets:\n  - data_paths: [x]\n    data_handlers:\n      - name: tokenize\n", "arguments: missing"),
    ("datasets: [\n", "not valid YAML"),
    ("dataprocessor: {type: fancy}\ndatasets:\n  - data_paths: [x]\n", "'fancy' is not"),
])
def test_malformed_data_configs_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "data_config.yaml"
    path.write_text(text)
    with pytest.raises(ReproError, match=match) as exc:
        data.load_data_config(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# training_logs.jsonl


def test_training_logs_read_back_by_the_fms_parser(tmp_path):
    from repro.verify.parsers import fms_training_logs

    log = file_logger.LossLogger("steps", logging_steps=1, max_steps=3)
    for step, loss in enumerate([2.5, 2.25, 2.0], start=1):
        log.add(loss)
        ev = log.on_step_end(step, step / 3)
        file_logger.append(tmp_path, file_logger.log_line("training_loss", ev[1], ev[0], ev[2]))
    records, issues = fms_training_logs.parse(tmp_path / "training_logs.jsonl")
    assert not issues
    assert [(r.step, r.loss, r.extra["epoch"]) for r in records] == [(1, 2.5, 0.33), (2, 2.25, 0.67), (3, 2.0, 1.0)]
    line = json.loads((tmp_path / "training_logs.jsonl").read_text().splitlines()[0])
    assert list(line) == ["data", "name"] and list(line["data"]) == ["epoch", "step", "timestamp", "value"]


def test_epoch_strategy_logs_the_epoch_mean_once():
    log = file_logger.LossLogger("epoch", logging_steps=1, max_steps=4)
    for step, loss in enumerate([4.0, 2.0, 3.0, 1.0], start=1):
        log.add(loss)
        assert log.on_step_end(step, step / 2) is None
        if step % 2 == 0:
            log.on_epoch_end(step, step / 2)
    assert log.events == [(2, 1.0, 3.0), (4, 2.0, 2.0)]


def test_an_epochs_leftover_micro_batches_make_a_short_step_and_logged_loss_is_rounded():
    """transformers 4.55 trains the leftover micro-batches of an epoch as a short accumulation step (fms used to
    drop them), and its logged loss is round(.., 4)."""
    from harness.fms.file_logger import LossLogger
    from harness.fms.sft_trainer import epoch_windows

    assert epoch_windows(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert epoch_windows(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
    log = LossLogger("steps", 1, 4)
    log.add(0.123456789)
    assert log.on_step_end(1, 0.5) == (1, 0.5, 0.1235)


@pytest.mark.needs_torch
def test_lora_scaling_and_mxfp4_are_read_from_the_model_not_the_flags():
    """The gpt-oss checks measure: peft's per-module scaling and alpha, and expert weights on the MXFP4 grid."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.fms.mxfp4 import snap
    from harness.fms.measure import measured_lora, measured_mxfp4, perturb_experts

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["0"]))
    assert measured_lora(peft_model) == {"lora_alpha": 16.0, "lora_scaling": 2.0}
    peft_model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(r=8, lora_alpha=32, target_modules=["0"]))
    assert measured_lora(peft_model)["lora_scaling"] == 4.0

    class Experts(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.tensor(w))

    holder = torch.nn.Module()
    holder.experts = Experts(snap(np.random.default_rng(0).normal(size=(2, 32, 4)).astype(np.float32)).astype(np.float32))
    assert measured_mxfp4(holder) == 1
    perturb_experts(holder)
    assert measured_mxfp4(holder) == 0
    assert measured_mxfp4(torch.nn.Linear(2, 2)) == 0  # no MXFP4 expert weights at all


def test_each_rank_draws_its_own_permutation_unless_data_seed_is_given():
    """fms 3.2.2 seeds accelerate's sampler with seed + rank (set_seed(device_specific=True) before the dataloader),
    measured on the real upstream; --data_seed gives every rank one shared permutation."""
    from harness.fms.sft_trainer import epoch_order, rank_microbatches, sampler_seed

    assert [sampler_seed(42, None, r) for r in range(3)] == [42, 43, 44]
    assert [sampler_seed(42, 7, r) for r in range(3)] == [7, 7, 7]
    own = [rank_microbatches(epoch_order(64, sampler_seed(42, None, r), 0), 2, 2, r) for r in range(2)]
    shared = [rank_microbatches(epoch_order(64, sampler_seed(42, 42, r), 0), 2, 2, r) for r in range(2)]
    assert sorted(i for r in shared for b in r for i in b) == list(range(64))  # a partition
    assert sorted(i for r in own for b in r for i in b) != list(range(64))  # rows repeat, others are skipped
    assert own[1][0] == [33, 24]  # rank 1's first batch in the real upstream run (rank 0's: [38, 24])
