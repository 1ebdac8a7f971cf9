"""A per-version export of a built twin asset: a copy that transformers 4.x / tokenizers <0.20 read with the
same meaning as transformers 5 reads the original (the pinned upstream environments are that old).

Why not change the builders: an asset's key hashes its builder module, so editing a builder re-keys every
golden; this module is no builder and no ASSET_INPUTS entry, and the export is keyed by the asset it copies.
What changes (each is a silent misread or a refusal in the old versions, measured in
shared/research/upstream-at-twin-scale.md):
- config.json: `rope_parameters` -> `rope_theta` (4.x ignores rope_parameters and falls back to 10000), and a
  scaled rope (gpt-oss's yarn) -> `rope_scaling` (its other keys); `dtype` also written as `torch_dtype`.
- tokenizer_config.json: `tokenizer_class` TokenizersBackend -> PreTrainedTokenizerFast (4.x refuses the
  v5 class); the v5-only keys `backend`, `is_local`, `local_files_only` dropped.
- tokenizer.json: BPE merges written as "a b" strings (tokenizers 0.19 cannot read pairs).
Weights and data files are hard-linked (copied across file systems), unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FORMAT = "transformers4"  # the export's name: the folder is <asset folder name>-<FORMAT>
V5_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")
V5_TOKENIZER_CLASSES = {"TokenizersBackend"}
STAMP = ".export.json"


def export_config(cfg: dict) -> dict:
    out = dict(cfg)
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            # 4.x reads the scaled rope (gpt-oss's yarn) from rope_scaling, the same keys without the theta
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in cfg and "torch_dtype" not in cfg:
        out["torch_dtype"] = cfg["dtype"]
    return out


def export_tokenizer_config(cfg: dict) -> dict:
    out = {k: v for k, v in cfg.items() if k not in V5_ONLY_TOKENIZER_KEYS}
    if out.get("tokenizer_class") in V5_TOKENIZER_CLASSES:
        out["tokenizer_class"] = "PreTrainedTokenizerFast"
    return out


def export_tokenizer_json(tok: dict) -> dict:
    model = tok.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or isinstance(merges[0], str):
        return tok
    bad = [m for m in merges if any(" " in part for part in m)]
    if bad:
        raise ValueError(f"merge {bad[0]!r} holds a space: it cannot be written as an 'a b' string")
    return {**tok, "model": {**model, "merges": [f"{a} {b}" for a, b in merges]}}


_REWRITES = {"config.json": export_config, "tokenizer_config.json": export_tokenizer_config,
             "tokenizer.json": export_tokenizer_json}


def export(src: Path, dest_root: Path) -> Path:
    """dest_root/<src name>-transformers4, written once (reused when its stamp names the same source)."""
    src = Path(src)
    dest = Path(dest_root) / f"{src.name}-{FORMAT}"
    if (dest / STAMP).is_file() and json.loads((dest / STAMP).read_text())["source"] == str(src):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name == "MANIFEST.sha256":
            continue
        if path.name in _REWRITES:
            data = _REWRITES[path.name](json.loads(path.read_text(encoding="utf-8")))
            (tmp / path.name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            try:
                os.link(path, tmp / path.name)
            except OSError:
                shutil.copy2(path, tmp / path.name)
    (tmp / STAMP).write_text(json.dumps({"source": str(src), "format": FORMAT}) + "\n", encoding="utf-8")
    tmp.rename(dest)
    return dest
