"""Imports go one way (README, "Find things in a minute"): an ast walk over repro/ and harness/.

- repro/base/ imports nothing else of the project;
- harness/ imports only repro.base (and itself);
- each repro stage imports only repro.base, harness and earlier stages, in the order of STAGES;
- nothing but the CLI itself imports repro.commands or repro.cli;
- a project import inside a function carries a comment saying why (on its line or the line above).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: repro's stages, earliest first; a module may import its own stage and earlier ones.
STAGES = ("base", "catalog", "plan", "lint", "twin", "verify", "report", "commands", "cli")
#: top-level modules of repro and the stage they belong to
TOP = {"__init__": "base", "errors": "base", "inputs": "base", "output": "commands", "cli": "cli",
       "__main__": "cli"}
#: the old name of repro.base.errors: two asset-keyed builder files import it (editing them re-keys goldens)
BASE_ALIASES = ("repro.errors",)
#: asset-keyed files (builder modules and their ASSET_INPUTS): never edited here, so their lazy imports stay
KEYED = {"harness/acerag/assets.py", "harness/fms/assets.py", "harness/open_instruct/start_models.py",
         "harness/toolgen/assets.py"}
#: the one known exception to "harness imports only base": the fms trainer builds its argument parser from
#: the pinned entry-point flag schema (recipes/_entrypoints, read by repro.catalog.flagschema)
HARNESS_EXCEPTIONS = {("harness/fms/cli.py", "repro.catalog.flagschema")}


def _modules():
    for top in ("repro", "harness"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]  # a module or a name inside one
            out += [(node, n) for n in names if n.split(".")[0] in ("repro", "harness")]
        elif isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] in ("repro", "harness")]
    return out


def stage_of(name: str) -> str | None:
    """The repro stage a dotted module name (or a name inside it) belongs to; None outside repro."""
    parts = name.split(".")
    if parts[0] != "repro":
        return None
    if len(parts) == 1:
        return "base"
    if parts[1] in STAGES:
        return parts[1]
    if parts[1] in TOP:
        return TOP[parts[1]]
    if any(name == a or name.startswith(a + ".") for a in BASE_ALIASES):
        return "base"
    return "base" if len(parts) == 2 and parts[1][:1].isupper() else None  # `from repro import ROOT`


def violations(rel: str, source: str) -> list[str]:
    """Every import in one file that goes against the direction (rel: its path under the root)."""
    tree = ast.parse(source)
    me = rel[:-3].replace("/", ".").removesuffix(".__init__")
    problems = []
    for node, name in _imports(tree):
        target = stage_of(name)
        if name.startswith(("repro.commands", "repro.cli")) and stage_of(me) not in ("commands", "cli"):
            problems.append(f"{rel}:{node.lineno}: imports the CLI ({name})")
        elif me.startswith("harness."):
            if name.startswith("harness") or target == "base" or (rel, name) in HARNESS_EXCEPTIONS:
                continue
            problems.append(f"{rel}:{node.lineno}: harness imports {name} (only repro.base and harness)")
        elif stage_of(me) == "base":
            if target != "base":
                problems.append(f"{rel}:{node.lineno}: the base layer imports {name}")
        elif target is not None and STAGES.index(target) > STAGES.index(stage_of(me)):
            problems.append(f"{rel}:{node.lineno}: {stage_of(me)} imports the later stage {target} ({name})")
    return sorted(set(problems))


def unexplained_lazy_imports(rel: str, source: str) -> list[str]:
    lines = source.splitlines()
    problems = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node, name in _imports(fn):
                line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                if "#" not in line and not above.startswith("#"):
                    problems.append(f"{rel}:{node.lineno}: {name} imported inside {fn.name}() without a comment")
    return sorted(set(problems))


def test_every_module_has_a_stage():
    unknown = [rel for rel, _ in _modules() if rel.startswith("repro/") and
               stage_of(rel[:-3].replace("/", ".").removesuffix(".__init__")) is None]
    assert unknown == []


def test_imports_go_one_way():
    problems = [p for rel, path in _modules() for p in violations(rel, path.read_text(encoding="utf-8"))]
    assert problems == []


def test_project_imports_inside_functions_say_why():
    problems = [p for rel, path in _modules() if rel not in KEYED
                for p in unexplained_lazy_imports(rel, path.read_text(encoding="utf-8"))]
    assert problems == []


@pytest.mark.parametrize("rel, source, expected", [
    ("repro/base/x.py", "from repro.catalog import loader\n", "the base layer imports"),
    ("harness/x/y.py", "from repro.twin import runner\n", "harness imports repro.twin"),
    ("repro/plan/x.py", "from repro.twin.retry import half\n", "plan imports the later stage twin"),
    ("repro/twin/x.py", "def f():\n    from repro.commands.run import x\n", "imports the CLI"),
    ("repro/lint/x.py", "import repro.twin.chain\n", "lint imports the later stage twin"),
])
def test_the_walk_catches_each_kind(rel, source, expected):
    """Mutants: each rule fails on an import that breaks it."""
    assert any(expected in p for p in violations(rel, source))


def test_the_walk_catches_an_unexplained_lazy_import():
    assert unexplained_lazy_imports("repro/x.py", "def f():\n    from repro.base import paths\n")
    assert not unexplained_lazy_imports("repro/x.py", "def f():\n    from repro.base import paths  # lazy: why\n")
