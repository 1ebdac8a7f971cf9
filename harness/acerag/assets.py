"""Asset builders for the AceRAG twins: Llama-2- and Qwen3-style tokenizers, tiny models, the data files.

Builders follow the runtime's contract ``build(out, params, deps) -> str | None``: write into the empty
folder ``out``, same bytes on every machine.  What mirrors the hub and why:

* Llama-2 tokenizer: ``<s>`` bos added to plain ``tokenizer(text)``, ``</s>`` eos, no pad (the entry point
  sets pad = eos as upstream), the [INST] chat template.  Qwen3 tokenizer: no bos at all (so encoder
  chunks carry no BOS and use the whole ``encoder_max_length``), eos ``<|im_end|>``, pad
  ``<|endoftext|>``, a ChatML template whose generation prompt gets an empty think block when
  ``enable_thinking=False`` (what Qwen3's template does).
* Models: ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` at twin width, untied embeddings, seeded init.
  The Llama-2 stand-in also carries ``pytorch_model.bin`` as the hub repository does: the Llama-2
  pretrain loads its encoder with ``use_safetensors False`` (the published command omits the flag),
  which only finds that file.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import CORPUS_DIR

MODEL_INIT_SEED = 1234
#: Llama-3's pre-tokenizer split, used for both styles (the twin's BPE is not sentencepiece; declared).
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus_files() -> list[Path]:
    """Tokenizer training text, in a fixed order (the BPE result depends on it)."""
    return sorted((CORPUS_DIR / "text").glob("*.txt"))


_HERE = Path(__file__).resolve().parent
#: Files besides this module whose bytes decide the assets (the runtime's cache key reads this).
ASSET_INPUTS = [*corpus_files(), CORPUS_DIR / "lexicon.json", _HERE / "data.py", _HERE / "compress.py",
                _HERE / "upstream_prompts.json"]

#: Llama-2-chat's prompt format ([INST] ... [/INST] answer </s>), written for the twin tokenizer.
LLAMA2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'].strip() + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
#: Qwen3's ChatML format; ``enable_thinking=False`` adds an empty think block to the generation prompt
#: (and Qwen3's template writes the same empty block before the last assistant answer).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% if loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)

STYLES = {
    "llama3": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": None,
        "unk": None,
        "template": None,
    },
    "llama2": {
        "specials": ["<unk>", "<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "unk": "<unk>",
        "template": LLAMA2_CHAT_TEMPLATE,
    },
    "qwen3": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "unk": None,
        "template": QWEN3_CHAT_TEMPLATE,
    },
}


def train_tokenizer(style: str, vocab: int):
    """Byte-level BPE on the bundled corpus; specials first (low ids); BOS added only where the style has one."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in corpus_files()], trainer)
    if spec["bos"]:
        bos_id = tok.token_to_id(spec["bos"])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']}:0 $A:0", pair=f"{spec['bos']}:0 $A:0 $B:1", special_tokens=[(spec["bos"], bos_id)]
        )
    kwargs = {k: spec[k] for k in ("bos", "eos", "pad", "unk") if spec[k]}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{f"{k}_token": v for k, v in kwargs.items()},
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    if spec["template"]:
        fast.chat_template = spec["template"]
    return fast


def build_tokenizer(out: Path, params: dict, deps: dict) -> None:
    """Builder: ``params = {style: llama2|qwen3, vocab: N}``."""
    del deps
    fast = train_tokenizer(params["style"], int(params.get("vocab", 1024)))
    fast.save_pretrained(out)


def model_config(arch: str, params: dict, tokenizer):
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=int(params["hidden_size"]),
        intermediate_size=int(params["intermediate_size"]),
        num_hidden_layers=int(params["num_hidden_layers"]),
        num_attention_heads=int(params["num_attention_heads"]),
        num_key_value_heads=int(params["num_key_value_heads"]),
        head_dim=int(params["head_dim"]),
        tie_word_embeddings=False,
        max_position_embeddings=int(params.get("max_position_embeddings", 4096)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if arch == "qwen3":
        return Qwen3Config(**common, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    raise ValueError(f"unknown arch {arch!r}")


#: Rows of the LM's own pre-training text: a generated file name no recipe trains on (same style as redpajama).
LM_PRETRAIN_FILE = "lm-pretrain"


def pretrain_lm(model, tokenizer, steps: int, seq: int = 128, batch: int = 8, lr: float = 3e-3) -> list[float]:
    """A few hundred AdamW steps of plain next-token training on generated text of the twin data's style.

    Why: a random-init LM scores every window near ln(vocab) whatever its context, so no change to the
    compressed context (ratio, selection, splice) can move the encoder's loss beyond a golden band. After
    this, the stand-in knows the sentence pattern and the names a text repeats, so what the encoder
    carries across windows decides part of the loss. Deterministic: seeded, one thread, fixed order.
    """
    import torch

    from harness.acerag.data import Lexicon, text_rows

    rows = text_rows(LM_PRETRAIN_FILE, 160, Lexicon.load())
    ids = [t for r in rows for t in tokenizer(r["text"])["input_ids"] + [tokenizer.eos_token_id]]
    data = torch.tensor(ids[: (len(ids) // (seq + 1)) * (seq + 1)]).view(-1, seq + 1)
    gen = torch.Generator().manual_seed(MODEL_INIT_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    losses = []
    try:
        model.train()
        for step in range(steps):
            rows_ix = torch.randint(0, data.shape[0], (batch,), generator=gen)
            x = data[rows_ix]
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 20)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return losses


def build_model(out: Path, params: dict, deps: dict) -> None:
    """Builder: ``params = {arch, hidden_size, ..., bin_weights: bool, lm_pretrain_steps: N}``, ``deps``: the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, Qwen3ForCausalLM

    if len(deps) != 1:
        raise ValueError(f"build_model needs exactly one dependency (its tokenizer), got {sorted(deps)}")
    tokenizer = AutoTokenizer.from_pretrained(next(iter(deps.values())))
    config = model_config(params["arch"], params, tokenizer)
    torch.manual_seed(MODEL_INIT_SEED)
    cls = LlamaForCausalLM if params["arch"] == "llama" else Qwen3ForCausalLM
    model = cls(config)
    steps = int(params.get("lm_pretrain_steps", 0))
    losses = pretrain_lm(model, tokenizer, steps) if steps else []
    model.save_pretrained(out)
    if params.get("bin_weights"):
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, Path(out) / "pytorch_model.bin")
    tokenizer.save_pretrained(out)
    if losses:  # written last: save_pretrained clears the folder's other files
        (Path(out) / "lm_pretrain.json").write_text(
            json.dumps({"steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}) + "\n")


def build_data(out: Path, params: dict, deps: dict) -> None:
    """Builder: the generated files named in ``params.files`` (default: all), ``<name>.json`` each."""
    from harness.acerag.data import FILES, write_files

    del deps
    names = tuple(params.get("files") or FILES)
    write_files(Path(out), names)
    (Path(out) / "FILES.json").write_text(json.dumps(sorted(names)) + "\n")
