"""repro: pinned recipes, scaled-down twins and a verifier for published LLM-training results."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the checkout holding recipes/, expected/, harness/).
ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = ROOT / "recipes"
EXPECTED_DIR = ROOT / "expected"
