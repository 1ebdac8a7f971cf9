"""Every twin trainer ends each optimizer step through the one hook (harness/runtime/step.py): the
divergence stop, the record, the fault and kill hooks. Held by reading the code (ast), so a new
trainer that writes its records some other way fails here."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from repro import ROOT
from repro.catalog import loader as catalog
from repro.base.metrics import MetricRecord, read_jsonl

HARNESS = ROOT / "harness"
OWN = {HARNESS / "runtime" / "step.py", HARNESS / "runtime" / "metrics.py"}


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _harness_imports(path: Path) -> set[Path]:
    """The harness modules `path` imports, transitively (a runner and everything it uses)."""
    seen, todo = set(), [path]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("harness")]
            todo += [f for f in map(_module_file, names) if f is not None]
    return seen


def _calls(path: Path, func: str) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == func) or (isinstance(f, ast.Attribute) and f.attr == func):
                return True
    return False


def _direct_writes(path: Path) -> list[int]:
    """Lines where a MetricsWriter (any name or attribute bound to MetricsWriter(...)) is written
    directly instead of through end_of_step."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    writers = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            f = node.value.func
            if (isinstance(f, ast.Name) and f.id == "MetricsWriter") or \
                    (isinstance(f, ast.Attribute) and f.attr == "MetricsWriter"):
                for t in node.targets:
                    writers.add(t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "write":
            v = node.func.value
            name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else None
            if name in writers:
                out.append(node.lineno)
    return out


RUNNERS = sorted({r.twin.runner for r in catalog.load_all().values() if r.twin is not None})


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_trainer_ends_its_steps_through_the_hook(runner):
    modules = _harness_imports(ROOT / runner) - {HARNESS / "runtime" / "step.py"}
    assert any(_calls(m, "end_of_step") for m in modules), f"{runner} never calls harness.runtime.step.end_of_step"


def test_no_trainer_writes_a_record_around_the_hook():
    bad = {str(p.relative_to(ROOT)): lines for p in sorted(HARNESS.rglob("*.py")) if p not in OWN
           for lines in [_direct_writes(p)] if lines}
    assert not bad, f"MetricsWriter.write outside the end-of-step hook: {bad}"


def test_the_ast_rule_can_fail(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("w = MetricsWriter('x', True)\nw.write(rec)\nself.writer = MetricsWriter('x', True)\n"
                 "self.writer.write(rec)\n")
    assert _direct_writes(p) == [2, 4]


def _records(out: Path) -> list[MetricRecord]:
    return list(read_jsonl(out / "metrics.jsonl"))


def test_hook_writes_then_stops_on_nan_and_injects_its_fault(tmp_path, monkeypatch):
    from harness.runtime import faults
    from harness.runtime.metrics import MetricsWriter
    from harness.runtime.step import NAN_STEP, end_of_step

    w = MetricsWriter(tmp_path, True)
    for step in (1, 2):
        end_of_step(w, MetricRecord(step=step, loss=1.0 / step, grad_norm=0.5), output_dir=str(tmp_path),
                    is_main=True)
    assert [r.loss for r in _records(tmp_path)] == [1.0, 0.5]  # unchanged numbers
    with pytest.raises(faults.Diverged, match="step 3: loss = nan"):
        end_of_step(w, MetricRecord(step=3, loss=math.nan), output_dir=str(tmp_path), is_main=True)
    assert math.isnan(_records(tmp_path)[-1].loss)  # the record is written before the stop
    assert json.loads((tmp_path / faults.DIVERGED_FILE).read_text())["step"] == 3

    monkeypatch.setenv(faults.FAULT_ENV, "nan_loss")
    other = tmp_path / "f"
    w = MetricsWriter(other, True)
    for step in range(1, NAN_STEP):
        end_of_step(w, MetricRecord(step=step, loss=2.0), output_dir=str(other), is_main=True)
    with pytest.raises(faults.Diverged):
        end_of_step(w, MetricRecord(step=NAN_STEP, loss=2.0), output_dir=str(other), is_main=True)
    monkeypatch.setenv(faults.FAULT_ENV, "no_such_fault")
    with pytest.raises(faults.ReproError, match="not a known fault"):
        end_of_step(w, MetricRecord(step=1, loss=2.0), output_dir=str(other), is_main=True)
