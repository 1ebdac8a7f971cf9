"""Asset builder for the ToolGen twins: the tool list, the three data files and train.py's project config.

Builder contract ``build(out, params, deps)``; returns a map hub-style id -> file so that the recipes'
``--datasets`` names resolve (the twin block also links them into the working directory, where
train.py opens them, as upstream does from training/).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import CORPUS_DIR

_HERE = Path(__file__).resolve().parent
#: Files besides this module whose bytes decide the data (the runtime's cache key reads this).
ASSET_INPUTS = [CORPUS_DIR / "lexicon.json", _HERE / "data.py", _HERE / "vtokens.py"]
#: training/src/configs/project_config.json at 6839374 (train.py's set_project reads it).
PROJECT_CONFIG = {"WANDB_PROJECT": "ToolGen"}


def build_data(out: Path, params: dict, deps: dict) -> dict[str, str]:
    """Builder: ``params = {n_tools, apis_per_tool}``; writes virtual_tokens.txt, the 3 JSON files, project_config.json."""
    from harness.toolgen.data import write_all

    del deps
    files = write_all(Path(out), int(params.get("n_tools", 16)), int(params.get("apis_per_tool", 2)))
    (Path(out) / "project_config.json").write_text(json.dumps(PROJECT_CONFIG) + "\n", encoding="utf-8")
    return {name: name for name in files.values()}
