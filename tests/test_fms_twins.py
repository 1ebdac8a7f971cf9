"""fms-hf-tuning twins end to end: goldens, what the published commands do, the FSDP drop guard, MXFP4
loading, and one-line errors for bad data configs and templates that match nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.lint import fms_published as published
from repro.catalog import loader as catalog
from repro.catalog.schema import TwinGeometry
from repro.base.errors import EXIT_BAD_INPUT, ReproError
from repro.twin import runner as twin

pytest.importorskip("torch", reason="the fms twins train with torch")

# the granite CP rows are fms recipes too; their own file (test_granite_twins.py) covers them
FMS = sorted(r.id for r in catalog.load_all().values()
             if r.family == "fms" and r.twin is not None and not r.id.startswith("fms-granite"))
SINGLE = "fms-llama2-7b-sft-single-gpu"
FSDP = "fms-llama2-7b-sft-fsdp"
GPT_OSS = "fms-gpt-oss-120b-lora-mxfp4"


def _run(rid: str, out: Path, sets: list[str] | None = None, geometry: TwinGeometry | None = None,
         env: dict[str, str] | None = None):
    run = twin.prepare(catalog.get(rid), out, sets or [], geometry)
    run.env.update(env or {})
    return twin.execute(run, echo=False)


def _fails(rid: str, out: Path, sets: list[str], env: dict[str, str] | None = None) -> ReproError:
    with pytest.raises(ReproError) as exc:
        _run(rid, out, sets, env=env)
    return exc.value


def test_every_fms_twin_is_covered():
    assert FMS == sorted([SINGLE, "fms-llama2-7b-sft-single-gpu-formatter", FSDP, GPT_OSS])


# Each twin against its golden: tests/test_twin.py::test_twin_passes_against_its_golden.


@pytest.mark.slow
def test_training_logs_jsonl_reads_back_as_the_metrics(tmp_path):
    from repro.verify.parsers import fms_training_logs

    run = _run(SINGLE, tmp_path)
    logs = next((tmp_path / "train").glob("*/training_logs.jsonl"))
    records, issues = fms_training_logs.parse(logs)
    assert not issues and len(records) == len(run.records) == 40
    # fms writes the loss rounded to 4 places (as transformers' Trainer logs it); the metrics keep full floats
    assert [(r.step, r.loss) for r in records] == [(m.step, round(m.loss, 4)) for m in run.records]
    assert any(m.loss != round(m.loss, 4) for m in run.records)  # the rounding is real, not a no-op
    assert records[7].extra["epoch"] == 1.0  # 8 steps per epoch, epoch rounded to 2 places


@pytest.mark.slow
def test_intended_llama_command_cannot_pad_with_its_tokenizer_flag(tmp_path):
    """With --tokenizer_name_or_path, fms adds no special tokens and Llama-2's tokenizer has no pad token."""
    err = _fails(SINGLE, tmp_path, ["tokenizer_name_or_path=meta-llama/Llama-2-7b-hf"])
    assert err.exit_code == EXIT_BAD_INPUT and "no pad token" in err.message


@pytest.mark.slow
def test_template_matching_nothing_is_one_line(tmp_path):
    err = _fails(SINGLE, tmp_path, ["response_template='\\n### Label:'"])  # quoted: --set splits like a shell
    assert err.exit_code == EXIT_BAD_INPUT and "matches no row" in err.message and "\n" not in err.message


@pytest.mark.slow
def test_malformed_data_config_is_one_line(tmp_path):
    bad = tmp_path / "data_config.yaml"
    bad.write_text("dataprocessor:\n    type: default\ndatasets:\n  - name: d\n    data_paths: HuggingFaceH4/x\n")
    err = _fails(GPT_OSS, tmp_path / "run", [f"data_config_path={bad}"])
    # each rank exits 2 with the line; torch elastic reports the launch as exit 1, the line survives
    assert f"--data_config_path {bad}: datasets[0].data_paths: must be a list of strings" in err.message


@pytest.mark.slow
def test_silent_accelerate_fsdp_drop_is_refused(tmp_path):
    """Letting accelerate wrap the model on CPU would give DDP (MULTI_CPU); the trainer refuses to go on."""
    _fails(FSDP, tmp_path, [], env={"REPRO_FMS_FSDP_IMPL": "accelerate"})
    log = (tmp_path / "train.log").read_text()
    assert "error: the accelerate config asks for FSDP but accelerate set up MULTI_CPU" in log


@pytest.mark.slow
def test_published_gpt_oss_command_trains_alpha_32_and_differs_from_the_intended(tmp_path):
    recipe = catalog.get(GPT_OSS)
    verdict = published.judge(recipe)
    # what 3.2.2 runs from the published text, as --set values over the intended command
    sets = [f"{d.field}={d.published}" for d in verdict.comparison.differences]
    assert sorted(sets) == ["logging_strategy=epoch", "lora_alpha=32"]
    one = TwinGeometry(processes=1, per_device=2, grad_accum=2)
    meant = _run(GPT_OSS, tmp_path / "intended", [], one)
    ran = _run(GPT_OSS, tmp_path / "published", sets, one)
    assert {r.extra["lora_alpha"] for r in meant.records} == {16}
    assert {r.extra["lora_alpha"] for r in ran.records} == {32}
    # LoRA B starts at zero: the first step is the base model's loss in both; alpha changes every later one
    assert ran.records[0].loss == pytest.approx(meant.records[0].loss, rel=1e-6)
    # embed_tokens (modules_to_save, alpha-free) does most of the learning in 16 steps, so the gap is small,
    # but far above float noise (equivalent layouts agree to ~1e-7 relative)
    gap = max(abs(a.loss - b.loss) / abs(b.loss) for a, b in zip(ran.records, meant.records))
    assert gap > 5e-6
    lines = (tmp_path / "published" / "train" / "gpt-oss-120b-multilingual-reasoner" / "training_logs.jsonl")
    assert len(lines.read_text().splitlines()) == 1  # logging_strategy epoch: one line for the one epoch


def test_mxfp4_checkpoint_loads_dequantized_to_its_decode(tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from harness.fms import mxfp4
    from repro.twin import assets

    built = assets.build(catalog.get(GPT_OSS))
    folder = built["gpt-oss-120b-twin-mxfp4"].root
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    stored = load_file(str(folder / "model.safetensors"))
    assert stored["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype == torch.uint8
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=Mxfp4Config(dequantize=True),
                                                 dtype=torch.float32)
    params = dict(model.named_parameters())
    for name in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"):
        ours = mxfp4.decode_param(stored[f"{name}_blocks"].numpy(), stored[f"{name}_scales"].numpy())
        assert np.array_equal(ours, params[name].detach().numpy()), name


def test_lora_ties_lm_head_to_the_embedding_copy_as_the_real_upstream_does():
    """fms d3c30a03 sets ensure_weight_tying with embed_tokens in modules_to_save; peft 0.19.1 then ties lm_head's
    trainable copy to embed_tokens' copy even though gpt-oss is untied (measured on the real upstream: the two
    state-dict entries equal, step-1 loss 6.9277 tied vs 6.9360 untied). peft 0.21 ties nothing; the twin does it."""
    import torch
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from harness.fms import cli
    from harness.fms.sft_trainer import apply_lora
    from repro.twin import assets

    folder = assets.build(catalog.get(GPT_OSS))["gpt-oss-120b-twin-mxfp4"].root
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=Mxfp4Config(dequantize=True),
                                                 dtype=torch.float32)
    assert not model.config.tie_word_embeddings
    args = cli.parse(["--model_name_or_path", "m", "--peft_method", "lora", "--r", "8", "--lora_alpha", "16",
                      "--target_modules", "all-linear"])
    peft_model, info = apply_lora(args, model, {"num_new_tokens": 1})
    inner = peft_model.get_base_model()
    head, emb = inner.get_output_embeddings(), inner.get_input_embeddings()
    assert info["lm_head_tied"] == 1 and info["modules_to_save"] == ["embed_tokens", "lm_head"]
    assert head.modules_to_save["default"].weight is emb.modules_to_save["default"].weight
    untouched, _ = apply_lora(args, AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32), {"num_new_tokens": 0})
    assert not hasattr(untouched.get_base_model().get_output_embeddings(), "modules_to_save")


def test_accelerate_fsdp_check_refuses_anything_but_fsdp():
    from harness.fms.sft_trainer import accelerate_fsdp_check

    accelerate_fsdp_check("FSDP", True)
    accelerate_fsdp_check("MULTI_CPU", False)
    with pytest.raises(ReproError, match="MULTI_CPU"):
        accelerate_fsdp_check("MULTI_CPU", True)


def test_fsdp_twin_command_keeps_the_fsdp_config_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_FORCE_CPU", "1")
    run = twin.prepare(catalog.get(FSDP), tmp_path)
    argv = run.argv
    assert "--multi_gpu" not in argv and "--cpu" not in argv  # either would replace FSDP with DDP
    config = Path(argv[argv.index("--config_file") + 1])
    assert "distributed_type: FSDP" in config.read_text() and "--num_processes=2" in argv
    gpt = twin.prepare(catalog.get(GPT_OSS), tmp_path / "g").argv
    data_config = Path(gpt[gpt.index("--data_config_path") + 1])
    assert data_config.is_file() and "tokenize_and_apply_chat_template_with_masking" in data_config.read_text()


# FSDP2 equivalence and its negative control (per-rank token normalization): tests/test_twin.py.
