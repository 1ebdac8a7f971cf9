"""repro: pinned recipes, scaled-down twins and a verifier for published LLM-training results."""

from repro.base.paths import EXPECTED_DIR, RECIPES_DIR, ROOT  # noqa: F401  (old spelling: `from repro import ROOT`)

__version__ = "0.1.0"
