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
    import json
    import time

    done: dict[str, tuple[int, Path, str]] = {}
    since = time.time()  # a stage is reused only when this session built it (goldens may have changed)

    def get(rid: str) -> tuple[int, Path, str]:
        if rid not in done:
            from repro.cli import main

            from repro.twin import chain

            slot, cached = _stage_folder(rid, since)
            buf = io.StringIO()
            if cached is not None:  # a chained twin built this stage already: the same run, not run twice
                out = cached
                code = 0 if json.loads((out / "verdict.json").read_text())["passed"] else 1
            elif slot is not None:  # built as a new version of the stage, so chained twins reuse it
                with chain.building(slot, rid) as build, contextlib.redirect_stdout(buf):
                    out = build.dir
                    code = main(["run", rid, "--scale", "twin", "--out", str(out), "--quiet", "--fresh"])
                    if chain.is_complete(out):
                        build.publish()
            else:
                out = tmp_path_factory.mktemp(rid) / "run"
                with contextlib.redirect_stdout(buf):
                    code = main(["run", rid, "--scale", "twin", "--out", str(out), "--quiet", "--fresh"])
            done[rid] = (code, out, buf.getvalue())
        return done[rid]

    return get


def _stage_folder(rid: str, since: float):
    """(stage folder, its current version when this session built it) for a twin that other twins start
    from: its plain run is exactly the stage `repro run` caches for them (repro.twin.chain), so the suite
    runs it there once; (None, None) for the others."""
    from repro.catalog import loader as catalog
    from repro.twin import chain

    recipe = catalog.get(rid)
    if not any(n.stage == rid for r in catalog.load_all().values() if r.twin for n in r.needs_list):
        return None, None
    slot = chain.stage_dir(recipe, chain.stage_key(recipe))
    version = chain.current(slot)
    fresh = version is not None and (version / "verdict.json").is_file() and \
        (version / "verdict.json").stat().st_mtime >= since
    return slot, version if fresh else None
