"""Asset builders of the RLVR twins: the prompt mixture, the warm-started policy and the RM shape.

They live in their own module so that their content keys hash exactly what decides their bytes
(``ASSET_INPUTS``: the prompt set in pref_data.py, the SFT data helpers, the model builders), while the
preference data and the SFT-shaped start model keep their own keys (and the DPO/RM goldens stay valid
when the RLVR prompt set changes).
"""

from __future__ import annotations

from pathlib import Path

from harness import CORPUS_DIR
from harness import chat_templates as _templates
from harness.open_instruct import encoding as _encoding
from harness.open_instruct import data as _data
from harness.open_instruct import pref_data as _pref
from harness.open_instruct import start_models as _models

#: 12 fixed prompts x 12: the recipes take the first 128 rows as their eval set, so there must be >= 128.
RLVR_MIXTURE_ROWS = 144
#: The warm start trains on the prompt set (pref_data.rlvr_prompts / warm_start_conversations) through the
#: tulu template and encode_sft_example: each of those files decides its bytes, so each enters the key.
ASSET_INPUTS = [Path(_pref.__file__), Path(_data.__file__), Path(_models.__file__), Path(_encoding.__file__),
                Path(_templates.__file__), CORPUS_DIR / "lexicon.json"]


def rlvr_mixture(out: Path, params: dict, deps: dict) -> str:
    """The RLVR prompt mixture in the upstream row format (see pref_data.rlvr_prompts)."""
    rows = _pref.rlvr_rows(int(params.get("rows", RLVR_MIXTURE_ROWS)))
    _data.write_jsonl(out / _pref.RLVR_FILE, rows)
    return _pref.RLVR_FILE


def warm_started_policy(out: Path, params: dict, deps: dict[str, Path]) -> None:
    _models.warm_started_policy(out, params, deps)


def reward_model_shape(out: Path, params: dict, deps: dict[str, Path]) -> None:
    _models.reward_model_shape(out, params, deps)
