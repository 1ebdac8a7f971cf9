"""Build each twin asset once, under a key that hashes everything that decides its bytes.

An asset is declared in a recipe's twin block: name, kind, builder ("harness.<module>:<function>"),
params, the hub ids it stands for, and the assets it depends on. Its key hashes the declaration, the
builder module's source (and any files it lists in ASSET_INPUTS), the library versions that shape the
bytes, and the keys of its dependencies, so changing one data builder changes only that data set's
key and the goldens that used it report themselves stale.

A builder is ``build(out: Path, params: dict, deps: dict[str, Path]) -> str | dict[str, str] | None``:
it writes into an empty folder; the return value says what a hub id resolves to inside it (a relative
path, a {hub id: relative path} map for assets that stand for several ids, or None for the folder).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from repro.base.errors import ReproError

#: Bump when the cache layout changes in a way the hashed inputs would not notice.
LAYOUT_VERSION = 2
VERSION_DISTS = ("torch", "transformers", "tokenizers", "safetensors")
KINDS = ("tokenizer", "model", "dataset", "other")
ENTRIES_FILE = "ENTRIES.json"


@dataclass(frozen=True)
class AssetSpec:
    name: str
    kind: str
    builder: str
    params: dict[str, Any] = field(default_factory=dict)
    stands_for: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltAsset:
    spec: AssetSpec
    key: str
    root: Path
    entries: dict[str, str]  # hub id -> absolute path


def resolve_builder(ref: str) -> tuple[ModuleType, Callable]:
    """'harness.x.y:func' -> (module, function); only modules of the harness package are allowed."""
    module_name, sep, func = ref.partition(":")
    if not sep or not module_name.startswith("harness.") or not func.isidentifier():
        raise ReproError(f"asset builder {ref!r}: expected 'harness.<module>:<function>'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReproError(f"asset builder {ref!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ReproError(f"asset builder {ref!r}: {module_name} has no function {func}")
    return module, fn


def _versions() -> str:
    out = []
    for dist in VERSION_DISTS:
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=absent")
    return ";".join(out)


def asset_key(spec: AssetSpec, dep_keys: dict[str, str]) -> str:
    module, _ = resolve_builder(spec.builder)
    h = hashlib.sha256(f"layout={LAYOUT_VERSION}\n{_versions()}\n".encode())
    decl = {"name": spec.name, "kind": spec.kind, "builder": spec.builder, "params": spec.params,
            "deps": {d: dep_keys[d] for d in spec.deps}}
    h.update(json.dumps(decl, sort_keys=True, default=str).encode())
    for path in [Path(module.__file__), *getattr(module, "ASSET_INPUTS", ())]:
        h.update(f"\n{Path(path).name}\n".encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _entries(spec: AssetSpec, root: Path, result) -> dict[str, str]:
    if isinstance(result, dict):
        mapped = {k: str(root / v) for k, v in result.items()}
        target = str(root / result[spec.stands_for[0]]) if spec.stands_for and spec.stands_for[0] in result else str(root)
    else:
        mapped, target = {}, str(root / result) if result else str(root)
    return {**{hub_id: target for hub_id in spec.stands_for}, **mapped, spec.name: target}


def write_manifest(root: Path) -> None:
    """SHA-256 of every file: the byte-identity check and the marker of a finished build."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "MANIFEST.sha256"]
    (root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _quiet_libraries() -> None:
    """Builds run inside the CLI: a library's progress bar on stderr would break its one-line errors."""
    for module, fn in (("transformers.utils.logging", "disable_progress_bar"), ("datasets", "disable_progress_bars")):
        try:
            getattr(importlib.import_module(module), fn)()
        except ImportError:
            pass


def build_one(spec: AssetSpec, key: str, deps: dict[str, Path], cache_dir: Path) -> BuiltAsset:
    """Build into a private temp folder and rename it into place (safe when several runs race)."""
    final = cache_dir / f"{spec.name}-{key[:16]}"
    if not (final / "MANIFEST.sha256").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _, fn = resolve_builder(spec.builder)
            _quiet_libraries()
            result = fn(tmp, dict(spec.params), deps)
            (tmp / ENTRIES_FILE).write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
            write_manifest(tmp)
            os.rename(tmp, final)
        except OSError:
            if not (final / "MANIFEST.sha256").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result = json.loads((final / ENTRIES_FILE).read_text(encoding="utf-8"))
    return BuiltAsset(spec, key, final, _entries(spec, final, result))


def order(specs: dict[str, AssetSpec]) -> list[str]:
    """Dependencies first; an unknown or cyclic dependency is bad input."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, via: str) -> None:
        if name in done:
            return
        if name not in specs:
            raise ReproError(f"twin asset {via!r} depends on {name!r}, which the twin block does not declare")
        if name in visiting:
            raise ReproError(f"twin assets depend on each other in a cycle through {name!r}")
        visiting.add(name)
        for dep in specs[name].deps:
            visit(dep, name)
        visiting.discard(name)
        done.append(name)

    for name in specs:
        visit(name, name)
    return done


def build_all(specs: dict[str, AssetSpec], cache_dir: str | os.PathLike) -> dict[str, BuiltAsset]:
    cache = Path(cache_dir).resolve()
    built: dict[str, BuiltAsset] = {}
    for name in order(specs):
        spec = specs[name]
        key = asset_key(spec, {d: built[d].key for d in spec.deps})
        built[name] = build_one(spec, key, {d: built[d].root for d in spec.deps}, cache)
    return built


def asset_map(built: dict[str, BuiltAsset]) -> dict:
    """What the trainer reads (REPRO_TWIN_ASSET_MAP): hub ids -> absolute paths, and the keys."""
    models, datasets = {}, {}
    for b in built.values():
        (datasets if b.spec.kind == "dataset" else models).update(b.entries)
    return {"models": models, "datasets": datasets, "keys": {n: b.key for n, b in built.items()}}
