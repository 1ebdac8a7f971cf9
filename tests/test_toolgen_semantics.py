"""ToolGen semantics (harness/toolgen): tool list, llama-3 segments and labels, virtual-token init, data."""

from __future__ import annotations

import json

import pytest

from harness.toolgen import data as D
from harness.toolgen.conversation import llama3_segments
from harness.toolgen.vtokens import combined_name, parse_virtual_tokens
from repro.base.errors import ReproError


def test_tool_list_is_unique_ascii_and_starts_with_finish():
    lines = D.virtual_token_lines(D.tools())
    assert lines[0] == "<<Finish>>" and len(lines) == len(set(lines)) == 33
    assert parse_virtual_tokens(lines) == lines


def test_duplicate_and_malformed_tool_tokens_are_one_line_errors():
    with pytest.raises(ReproError, match=r"line 3: duplicate tool token '<<A&&b>>' \(first on line 1\)"):
        parse_virtual_tokens(["<<A&&b>>", "<<C&&d>>", " <<A&&b>> "])
    with pytest.raises(ReproError, match="line 1: 'plain' is not"):
        parse_virtual_tokens(["plain"])
    with pytest.raises(ReproError, match="not ASCII"):
        parse_virtual_tokens(["<<Caf\u00e9&&menu>>"])


def test_combined_name():
    assert combined_name("<<QRCheck&&quality_v1_quality_post>>") == "QRCheck quality_v1_quality_post"
    assert combined_name("<<Finish>>") == "Finish"


def test_llama3_segments_loss_flags_roles_and_system():
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": " hi ", "loss": False},
            {"role": "assistant", "content": "<<T&&a>>", "loss": True},
            {"role": "function", "content": "{}"}]
    segs = llama3_segments(conv)
    assert segs == [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", False),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("<<T&&a>><|eot_id|>", True),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n{}<|eot_id|>", False),  # function -> assistant, no loss
    ]


def test_generated_rows_follow_the_published_formats():
    tl = D.tools()
    mem, ret, e2e = D.memorization_rows(tl), D.retrieval_rows(tl), D.e2e_rows(tl)
    assert len(mem) == 32 and len(ret) == 96 and len(e2e) == 16
    m = mem[0]["conversations"]
    assert m[0]["content"].startswith("Tool Name: ") and "Api Name: " in m[0]["content"] and not m[0]["loss"]
    assert m[1]["content"] in D.virtual_token_lines(tl) and m[1]["loss"]
    roles = [x["role"] for x in e2e[0]["conversations"]]
    assert roles[0] == "system" and "function" in roles
    assert e2e[0]["conversations"][-3]["content"] == "<<Finish>>"
    json.dumps(e2e)  # serialisable as the hub files are


torch = pytest.importorskip("torch", reason="the twin extra (torch) is not installed")
transformers = pytest.importorskip("transformers", reason="the twin extra (transformers) is not installed")


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A Llama-3-style tokenizer and a tiny LlamaForCausalLM (untied), float32."""
    from harness.acerag.assets import train_tokenizer

    folder = tmp_path_factory.mktemp("llama3")
    train_tokenizer("llama3", 512).save_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return folder, transformers.LlamaForCausalLM(cfg)


def test_tokenize_conversation_double_bos_and_labels(llama3):
    from harness.toolgen.conversation import tokenize_conversation

    tok = transformers.AutoTokenizer.from_pretrained(llama3[0])
    tok.add_tokens(["<<T&&a>>"])
    conv = [{"role": "user", "content": "find it"}, {"role": "assistant", "content": "<<T&&a>>", "loss": True}]
    out = tokenize_conversation(conv, tok, "llama-3", 1024)
    bos = tok.bos_token_id
    assert out["input_ids"][:2] == [bos, bos]  # tokenizer.bos_token + "<|begin_of_text|>..."
    trained = [t for t, lab in zip(out["input_ids"], out["labels"]) if lab != -100]
    assert trained == [tok.convert_tokens_to_ids("<<T&&a>>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    assert out["labels"][0] == -100  # so 4.48.3's and 5.24's label counts agree
    assert len(tokenize_conversation(conv, tok, "llama-3", 5)["input_ids"]) == 5
    with pytest.raises(ReproError, match="template"):
        tokenize_conversation(conv, tok, "vicuna_v1.1", 10)


def test_virtual_token_rows_are_subword_means_and_output_rows_the_old_mean(llama3):
    from harness.toolgen.vtokens import add_virtual_tokens, init_virtual_embeddings

    tok, model = transformers.AutoTokenizer.from_pretrained(llama3[0]), llama3[1]
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    tokens = ["<<Kalo Hammer&&get_time>>", "<<Finish>>"]
    assert add_virtual_tokens(tok, tokens) == 2
    ids = init_virtual_embeddings(model, tok, tokens)
    new_in = model.get_input_embeddings().weight.detach()
    sub = tok("Kalo Hammer get_time", add_special_tokens=False).input_ids
    assert torch.allclose(new_in[ids[tokens[0]]], old_in[sub].mean(0), atol=1e-6)
    assert torch.equal(new_in[: old_in.shape[0]], old_in)
    new_out = model.get_output_embeddings().weight.detach()
    assert new_out.shape[0] == len(tok)
    assert torch.allclose(new_out[ids["<<Finish>>"]], old_out.mean(0), atol=1e-3)  # N(mean, 1e-9 cov)


def test_stage_one_without_virtual_tokens_is_refused(llama3):
    from types import SimpleNamespace

    from harness.toolgen.train import check_tool_tokens

    fresh = transformers.AutoTokenizer.from_pretrained(llama3[0])
    rows = [r["conversations"] for r in D.memorization_rows(D.tools())]
    args = SimpleNamespace(datasets=["toolgen_atomic_memorization.json"], model_name_or_path="m", add_virtual_tokens=False)
    with pytest.raises(ReproError, match="row 1: tool token .* is not in the tokenizer.*add_virtual_tokens True"):
        check_tool_tokens(rows, fresh, args)


def _train_py(cwd, *argv):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    env.pop("REPRO_TWIN_ASSET_MAP", None)
    return subprocess.run([sys.executable, str(root / "harness" / "toolgen" / "train.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_duplicate_tool_token_in_the_list_is_one_line_exit_2(llama3, tmp_path):
    (tmp_path / "src" / "configs").mkdir(parents=True)
    (tmp_path / "src" / "configs" / "project_config.json").write_text('{"WANDB_PROJECT": "ToolGen"}')
    (tmp_path / "src" / "configs" / "virtual_tokens.txt").write_text("<<Finish>>\n<<A&&b>>\n<<A&&b>>\n")
    (tmp_path / "rows.json").write_text("[]")
    proc = _train_py(tmp_path, "--model_name_or_path", str(llama3[0]), "--add_virtual_tokens", "True", "--chat", "True",
                     "--output_dir", str(tmp_path / "out"), "--datasets", "rows.json", "--dataset_nums", "1",
                     "--report_to", "none")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "duplicate tool token '<<A&&b>>' (first on line 2)" in lines[-1]
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_predecessor_output_and_checkpoint_are_one_line_errors(tmp_path):
    from repro.catalog import loader as catalog
    from repro.twin.chain import resolve_input

    with pytest.raises(ReproError, match="predecessor toolgen-llama3-8b-memorization has no output folder"):
        resolve_input(catalog.get("toolgen-llama3-8b-retrieval"), tmp_path / "missing")
    (tmp_path / "enc").mkdir()
    with pytest.raises(ReproError, match=r"left no checkpoint-\* under .*sort -V \| tail -n 1"):
        resolve_input(catalog.get("acerag-qwen3-8b-longalpaca"), tmp_path / "enc")
    for n in (3, 6, 9, 12):  # --save_steps 0.249999 of 12 steps; a plain sort would pick checkpoint-9
        (tmp_path / "enc" / f"checkpoint-{n}" / "compressive_encoder").mkdir(parents=True)
    assert resolve_input(catalog.get("acerag-qwen3-8b-longalpaca"), tmp_path / "enc").parent.name == "checkpoint-12"


def _twin(rid, out, **env):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    full = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", **env)
    full["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full.get("PATH", "")])
    return subprocess.run([sys.executable, "-m", "repro", "run", rid, "--scale", "twin", "--out", str(out), "--quiet"],
                          cwd=root, env=full, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_memorization_with_tool_labels_dropped_fails_the_accuracy_checks_only(tmp_path):
    """The loss still falls (only <|eot_id|> is trained); the tool-token accuracy checks catch it."""
    proc = _twin("toolgen-llama3-8b-memorization", tmp_path, REPRO_TWIN_FAULT="tool_labels_dropped")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    checks = {c["name"]: c["status"] for c in json.loads((tmp_path / "verdict.json").read_text())["checks"]}
    failed = {n for n, s in checks.items() if s == "FAIL"}
    assert {n for n in failed if "tool_token_acc" in n}
    # besides them only the curves it is compared with: its golden and the real upstream's (which sees it too)
    assert all("tool_token_acc" in n or "golden" in n or "vs upstream" in n for n in failed), failed
    assert checks["loss vs upstream"] == "FAIL" and checks["steps vs upstream"] == "PASS"
    assert checks["falls loss"] == "PASS"


def test_label_turns_one_tool_token_except_e2e():
    """Why memorization and retrieval put the loss reduction in cannot-prove: their loss-flagged turns are one
    tool token each (one id, plus <|eot_id|>), so every token mean is the same mean; only e2e's turns differ in
    length (and even there a global mean moved the curve by at most 4.6e-4, so e2e declares it unprovable too)."""
    from harness.toolgen import data as tg_data

    tools = tg_data.tools(8, 2)
    tokens = set(tg_data.virtual_token_lines(tools))
    for rows in (tg_data.memorization_rows(tools), tg_data.retrieval_rows(tools)):
        for row in rows:
            labelled = [m["content"] for m in row["conversations"] if m["loss"]]
            assert len(labelled) == 1 and labelled[0] in tokens
    lengths = {sum(len(m["content"]) for m in row["conversations"] if m["loss"]) for row in tg_data.e2e_rows(tools)}
    assert len(lengths) > 4, lengths
