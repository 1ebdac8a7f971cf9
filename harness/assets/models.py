"""Tiny models built from config: the architecture class and config values come from the twin block.

Weights are initialised under a fixed seed and saved like a hub repo (weights + the tokenizer the
model was built for), so ``from_pretrained`` of the folder is the loading code the trainers run.
"""

from __future__ import annotations

from pathlib import Path

#: Config fields filled from the tokenizer dependency unless the twin block sets them.
FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id")


def model_config(arch: str, config: dict, tokenizer=None):
    """The architecture's own config class with the declared values (vocab/bos/eos from the tokenizer)."""
    import transformers

    cls = getattr(transformers, arch, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ValueError(f"transformers has no model class {arch!r}")
    values = dict(config)
    if tokenizer is not None:
        filled = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                  "eos_token_id": tokenizer.eos_token_id}
        for key in FROM_TOKENIZER:
            values.setdefault(key, filled[key])
    return cls, cls.config_class(**values)


def from_config(out: Path, params: dict, deps: dict[str, Path]) -> None:
    """Builder: params {arch, config, dtype (default bfloat16), init_seed (default 1234), tokenizer (the
    dependency to take vocab/bos/eos from; default: the only dependency)}."""
    import torch
    from transformers import AutoTokenizer

    tok_dep = params.get("tokenizer") or (next(iter(deps)) if len(deps) == 1 else None)
    if tok_dep is not None and tok_dep not in deps:
        raise ValueError(f"from_config: tokenizer {tok_dep!r} is not a dependency of this model")
    tokenizer = AutoTokenizer.from_pretrained(deps[tok_dep]) if tok_dep else None
    config = dict(params["config"])
    dtype = params.get("dtype", "bfloat16")
    config.setdefault("dtype", dtype)
    cls, cfg = model_config(params["arch"], config, tokenizer)
    torch.manual_seed(int(params.get("init_seed", 1234)))
    model = cls(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
