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


@pytest.fixture(scope="session")
def twin_run(tmp_path_factory):
    """Each twin's plain run (`repro run ID --scale twin`) happens once per session; the generic golden
    test and the family tests that read the same run's outputs share it (CI time is budgeted)."""
    import contextlib
    import io

    done: dict[str, tuple[int, Path, str]] = {}

    def get(rid: str) -> tuple[int, Path, str]:
        if rid not in done:
            from repro.cli import main

            out = tmp_path_factory.mktemp(rid) / "run"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(["run", rid, "--scale", "twin", "--out", str(out), "--quiet"])
            done[rid] = (code, out, buf.getvalue())
        return done[rid]

    return get
