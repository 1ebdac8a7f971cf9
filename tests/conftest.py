import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def recipes():
    from repro.catalog import loader as catalog

    return catalog.load_all()


HAS_TORCH = __import__("importlib").util.find_spec("torch") is not None
NO_TORCH = ("needs the twin extra (torch, transformers, accelerate): "
            "pip install -c constraints-cpu.txt -e '.[twin,verify,test]'")


def pytest_collection_modifyitems(config, items):
    """Twin runs and asset builds need torch; without it they skip with the install line, never fail."""
    if HAS_TORCH:
        return
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("needs_torch"):
            item.add_marker(pytest.mark.skip(reason=NO_TORCH))
