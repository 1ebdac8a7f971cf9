"""AceRAG model semantics on tiny built assets: splice exactness, frozen LM, encoder save/load contract."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the twin extra (torch) is not installed")
pytest.importorskip("transformers", reason="the twin extra (transformers) is not installed")

from harness.acerag import compress as C  # noqa: E402
from harness.acerag.assets import build_model, build_tokenizer  # noqa: E402
from harness.acerag.model import AceRAG, tensor_digest  # noqa: E402
from harness.acerag.train import SFTCollator, check_encoder_folder, encode_with_labels  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402

SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok")
    build_tokenizer(tok, {"style": "llama2", "vocab": 512}, {})
    lm = tmp_path_factory.mktemp("lm")
    build_model(lm, {"arch": "llama", **SHAPE, "bin_weights": True}, {"tokenizer": tok})
    return lm


def make(path, **kw):
    args = dict(window_mode=False, window=16, lm_max_length=256, encoder_max_length=64, comp_candidates=[1, 2],
                pretraining_down_scaling_method="random", dtype=torch.float32, attn_implementation="eager",
                use_safetensors=False)
    args.update(kw)
    return AceRAG(str(path), str(path), 2, **args)


def sample(tokenizer, ratio, method="stride"):
    prompt = f"Notes:\n{C.CONTEXT_TAG}\nWhere is Kalo?"
    context = "Kalo is a baker in the garden. Mira is a nurse in the museum. " * 3
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "In the garden."}]
    wo = encode_with_labels(tokenizer, conv)
    w = encode_with_labels(tokenizer, [{"role": "user", "content": prompt.replace(C.CONTEXT_TAG, context)}, conv[1]])
    s = C.encode_finetune_sample(wo["input_ids"], wo["labels"], w["input_ids"], w["labels"], ratio=ratio,
                                 lm_max_length=256, encoder_max_length=64, bos_token_id=tokenizer.bos_token_id,
                                 method=method)
    return s, w


def test_ratio_one_without_truncation_equals_the_uncompressed_input(llama):
    """Selection + splice are exact: an identity 'encoder' at ratio 1 reproduces the uncompressed LM input."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    model = make(llama).eval()
    s, w = sample(tok, 1)
    assert not s.truncated and len(s.encoder_input_ids) > 1  # several chunks, still exact
    embed = model.language_model.get_input_embeddings()
    model.compressive_encoder.forward = lambda ids, mask, idx: torch.cat(
        [embed(ids)[i][list(j)] for i, j in enumerate(idx)])
    batch = SFTCollator(tok.eos_token_id)([{"input_ids": s.input_ids, "labels": s.labels, "ph_indices": s.ph_indices,
                                           "encoder_input_ids": s.encoder_input_ids,
                                           "encoder_indices": s.encoder_indices}])
    with torch.no_grad():
        got = model(**batch)
        ref = model.language_model(input_ids=torch.tensor([w["input_ids"]]), labels=torch.tensor([w["labels"]]))
    assert torch.allclose(got.logits, ref.logits, atol=1e-5, rtol=0)
    assert abs(got.loss.item() - ref.loss.item()) < 1e-6
    # and a ratio of 2 is NOT the uncompressed input (the test can fail)
    s2, _ = sample(tok, 2)
    assert len(s2.input_ids) < len(w["input_ids"])


def test_gradients_reach_only_the_encoder_and_lm_stays_bit_identical(llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    model = make(llama)
    before = tensor_digest(model.language_model)
    s, _ = sample(tok, 2, "random")
    batch = SFTCollator(tok.eos_token_id)([{"input_ids": s.input_ids, "labels": s.labels, "ph_indices": s.ph_indices,
                                           "encoder_input_ids": s.encoder_input_ids,
                                           "encoder_indices": s.encoder_indices}])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.compressive_encoder.parameters())
    opt.step()
    assert tensor_digest(model.language_model) == before
    assert len(model.compressive_encoder.model.layers) == 2 and not hasattr(model.compressive_encoder.model, "lm_head")


def test_window_mode_loss_is_finite_and_batch_size_one(llama):
    model = make(llama, window_mode=True)
    ids = torch.randint(5, 500, (1, 50))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    assert torch.isfinite(out["loss"]) and len(model.last_windows) == 3
    with pytest.raises(ValueError, match="batch_size must be 1"):
        model(input_ids=ids.repeat(2, 1), attention_mask=torch.ones(2, 50, dtype=torch.long), labels=ids.repeat(2, 1))


def test_saved_encoder_reloads_with_safetensors_and_refuses_without(llama, tmp_path):
    model = make(llama)
    with torch.no_grad():
        model.compressive_encoder.model.norm.weight.add_(0.5)
    model.save(str(tmp_path / "checkpoint-3"))
    enc = tmp_path / "checkpoint-3" / "compressive_encoder"
    assert (enc / "model.safetensors").is_file() and not (enc / "pytorch_model.bin").exists()
    check_encoder_folder(str(enc), use_safetensors=True)
    with pytest.raises(ReproError, match="use_safetensors"):
        check_encoder_folder(str(enc), use_safetensors=False)
    again = AceRAG(str(llama), str(enc), 2, window_mode=False, window=16, lm_max_length=256, encoder_max_length=64,
                   comp_candidates=[1], pretraining_down_scaling_method="stride", dtype=torch.float32,
                   attn_implementation="eager", use_safetensors=True)
    assert tensor_digest(again.compressive_encoder.model) == tensor_digest(model.compressive_encoder.model)
    # the hub stand-in loads through pytorch_model.bin, as the Llama-2 pretrain (no --use_safetensors) does
    check_encoder_folder(str(llama), use_safetensors=False)


def test_missing_and_corrupt_encoder_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ReproError, match="no such folder.*run the upstream stage first"):
        check_encoder_folder("/compressive_encoder", use_safetensors=True)
    bad = tmp_path / "compressive_encoder"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ReproError, match="config.json"):
        check_encoder_folder(str(bad), use_safetensors=True)


def test_qwen3_encoder_truncation_saves_and_reloads(tmp_path):
    """Qwen3 configs list layer_types per layer: the k-layer encoder must save (and reload) as k layers."""
    tok = tmp_path / "tok"
    build_tokenizer(tok, {"style": "qwen3", "vocab": 512}, {})
    lm = tmp_path / "lm"
    build_model(lm, {"arch": "qwen3", **SHAPE}, {"tokenizer": tok})
    model = make(lm, use_safetensors=True)
    model.save(str(tmp_path / "ckpt"))
    enc = tmp_path / "ckpt" / "compressive_encoder"
    check_encoder_folder(str(enc), use_safetensors=True)
    again = make(lm, use_safetensors=True)
    again.compressive_encoder.__init__(str(enc), 2, torch.float32, "eager", 16, 64, [1, 2], "random",
                                       use_safetensors=True)
    assert len(again.compressive_encoder.model.layers) == 2


def test_corrupt_encoder_weights_through_the_entry_point_are_one_line_exit_2(llama, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    enc = tmp_path / "checkpoint-8" / "compressive_encoder"
    enc.mkdir(parents=True)
    shutil.copy(llama / "config.json", enc / "config.json")
    (enc / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")  # a cut-off file
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    env.pop("REPRO_TWIN_ASSET_MAP", None)
    proc = subprocess.run(
        [sys.executable, str(root / "harness" / "acerag" / "train.py"), "--language_model_name_or_path", str(llama),
         "--encoder_name_or_path", str(enc), "--encoder_num_hidden_layers", "2", "--use_safetensors", "True",
         "--stage", "ft", "--data_files", "x.json", "--output_dir", str(out), "--dtype", "float32", "--bf16", "False",
         "--attn_implementation", "sdpa"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"main.train_compressive_encoder: error: --encoder_name_or_path {enc}: cannot load")
    assert not out.exists()  # nothing written


def test_comp_ratio_is_counted_from_the_window_plan(llama):
    """extra.comp_ratio reads what the forward spliced: 8 compressed tokens per state with every ratio 8,
    exactly 1 with every ratio 1 (the window-mode checks ratio_mix_high/low stand on this)."""
    ids = torch.randint(3, 500, (1, 80))
    for ratio in (8, 1):
        model = make(llama, window_mode=True, comp_candidates=[ratio], encoder_max_length=64)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
        assert model.take_comp_ratio() == ratio
        assert model.take_comp_ratio() is None  # read once per log


def test_pretrained_stand_in_lm_has_learned_the_text(tmp_path):
    """The builder's few hundred steps take the stand-in LM well below uniform (ln 1024 = 6.93), so its
    loss depends on what context it sees."""
    from harness.acerag.assets import build_tokenizer as bt

    tok = tmp_path / "tok"
    bt(tok, {"style": "llama2", "vocab": 512}, {})
    out = tmp_path / "lm"
    build_model(out, {"arch": "llama", **SHAPE, "lm_pretrain_steps": 40}, {"tokenizer": tok})
    import json

    report = json.loads((out / "lm_pretrain.json").read_text())
    assert report["last_loss"] < report["first_loss"] - 1.0, report


@pytest.mark.slow
def test_comp_candidates_8_fails_the_pretrain_twin(tmp_path):
    """Every window compressed 8x (the issue's case: at the 1x1x4 geometry) fails the ratio check."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run([sys.executable, "-m", "repro", "run", "acerag-llama2-7b-pretrain", "--scale", "twin",
                           "--geometry", "1x1x4", "--set", "comp_candidates=8", "--out", str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    checks = json.loads((tmp_path / "verdict.json").read_text())["checks"]
    failed = [c["name"] for c in checks if c["status"] == "FAIL"]
    assert "final_below extra.comp_ratio" in failed, failed
