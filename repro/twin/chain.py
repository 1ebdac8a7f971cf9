"""Chained stages: a recipe that starts from another recipe's output (its ``needs``).

Why as data: the published pipelines are chains (ToolGen memorization -> retrieval -> end-to-end;
AceRAG pretrain -> LongAlpaca -> multitask), and each published command finds its input in its own way:
a fixed path (``--model_name_or_path checkpoints/...``) or the newest checkpoint by version sort
(``ls -d ${BASE}/checkpoint-* | sort -V | tail -n 1``). A twin applies the same rule to the real output
of the previous stage's twin, so each stage consumes what the stage before it wrote.

Upstream stages are cached under REPRO_CACHE/stages/<id>-<key>, keyed by everything that decides their
output: the recipe and family twin files, the asset keys, the trainer code (runner package and
harness/runtime), the numeric stack, and the upstream's own key (recursively). A matching cached stage
is reused (and the run says so); ``repro run ID --chain`` rebuilds every stage of the chain.

Safe under concurrent runs: a stage's folder holds versions (v-<time>-<pid>/), each built in its own
private folder and published by an atomic rename of the ``current`` link onto it; a run that reads a
version holds a shared lock on it (its .<version>.lock) for as long as it runs, and old versions are only
deleted by a builder that can take that lock exclusively, so no run deletes or rebuilds a stage another
run is using. ``--chain`` builds a new version beside the old one. One builder per stage at a time
(.build.lock): a second run that needs the same stage waits for it, says so, and then reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from harness.assets.cache import AssetSpec, asset_key, build_one
from repro.base.paths import CACHE_DIR, ROOT
from repro.catalog import loader as catalog
from repro.catalog.schema import Needs, Recipe
from repro.base.errors import ReproError
from repro.plan.prelude import arg_value
from repro.twin import assets, readback
from repro.twin.runner import env_key

STAGES_DIR = "stages"


def chain_of(recipe: Recipe) -> list[Recipe]:
    """The recipes from the first stage(s) to this one, each after every stage it needs (a cycle is bad
    input). With several needs (Tulu 3 RLVR: DPO and RM) this is the stages of a DAG in build order."""
    out: list[Recipe] = []
    done: set[str] = set()

    def visit(r: Recipe, path: tuple[str, ...]) -> None:
        if r.id in done:
            return
        if r.id in path:
            raise ReproError(f"{recipe.id}: needs form a cycle through {r.id}")
        for n in r.needs_list:
            visit(catalog.get(n.stage), path + (r.id,))
        done.add(r.id)
        out.append(r)

    visit(recipe, ())
    return out


def describe(recipe: Recipe) -> list[str]:
    """Human lines for `repro show` / `repro plan`: the chain and how each stage finds its input."""
    stages = chain_of(recipe)
    if len(stages) == 1 and not recipe.depends_on:
        return []
    lines = ["chain: " + " -> ".join(r.id for r in stages)]
    for r in stages:
        for n in r.needs_list:
            lines.append(f"  {r.id} reads {n.describe()} ({n.source})")
    return lines


def version_key(name: str) -> list:
    """`sort -V` order for checkpoint names: digit runs compare as numbers (checkpoint-10 > checkpoint-9)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", name)]


def output_dir(upstream: Recipe, run_dir: Path) -> Path:
    """Where the upstream twin wrote its --output_dir (repro.twin.command keeps the published basename)."""
    published = arg_value(upstream, "--output_dir")
    if not published:
        raise ReproError(f"{upstream.id}: no --output_dir in its command; a later stage cannot find its output")
    return run_dir / "train" / Path(published).name


def resolve_input(recipe: Recipe, upstream_out: Path, needs: Needs | None = None) -> Path:
    """The path the published text would hand to needs.flag, found by the recipe's rule in the real output."""
    needs = needs or recipe.needs_list[0]
    if not upstream_out.is_dir():
        raise ReproError(f"{recipe.id}: the predecessor {needs.stage} has no output folder {upstream_out}")
    if needs.find == "published_model":
        # open-instruct saves the final model (save_pretrained, with its tokenizer) into --output_dir itself;
        # the next stage's from_pretrained reads that folder
        if not (upstream_out / "config.json").is_file():
            raise ReproError(f"{recipe.id}: the predecessor {needs.stage} saved no model in {upstream_out} "
                             "(no config.json: its trainer did not reach the final save)")
        return upstream_out
    if needs.find == "fixed":
        base = upstream_out
    else:
        hits = sorted((p for p in upstream_out.glob(needs.pattern) if p.is_dir()), key=lambda p: version_key(p.name))
        if not hits:
            raise ReproError(f"{recipe.id}: the predecessor {needs.stage} left no {needs.pattern} under {upstream_out} "
                             f"(the published `ls -d ... | sort -V | tail -n 1` would find nothing)")
        base = hits[-1]
    path = base / needs.subpath if needs.subpath else base
    if not path.exists():
        raise ReproError(f"{recipe.id}: {path} is missing in the predecessor {needs.stage}'s output")
    return path


def _code_files(recipe: Recipe) -> list[Path]:
    runner_pkg = (ROOT / recipe.twin.runner).parent
    files = sorted(runner_pkg.glob("*.py")) + sorted((ROOT / "harness" / "runtime").glob("*.py"))
    return files


def stage_key(recipe: Recipe, _memo: dict | None = None) -> str:
    """Content key of a stage's twin output (see the module docstring)."""
    memo = _memo if _memo is not None else {}
    if recipe.id in memo:
        return memo[recipe.id]
    if recipe.twin is None:
        raise ReproError(f"{recipe.id}: a chained stage needs a twin")
    h = hashlib.sha256(f"stage {recipe.id}\n{env_key()}\n".encode())
    recipe_file = catalog.recipe_path(recipe.id)
    for path in [recipe_file, recipe_file.parent / catalog.TWIN_DEFAULTS, *_code_files(recipe)]:
        if path.is_file():
            h.update(f"{path.relative_to(ROOT)}\n".encode())
            h.update(path.read_bytes())
    h.update(json.dumps(assets.keys(recipe), sort_keys=True).encode())
    for n in recipe.needs_list:
        h.update(f"needs {n.model_dump_json()}\n".encode())
        h.update(stage_key(catalog.get(n.stage), memo).encode())
    memo[recipe.id] = h.hexdigest()
    return memo[recipe.id]


def stage_dir(recipe: Recipe, key: str) -> Path:
    """The stage's folder: its versions, the `current` link, the lock files."""
    return CACHE_DIR / STAGES_DIR / f"{recipe.id}-{key[:16]}"


def is_complete(run_dir: Path) -> bool:
    """A cached stage counts when its twin trained to the end (manifest with returncode 0)."""
    manifest = readback.stage_manifest(run_dir)  # empty, truncated or not an object: not built
    return manifest is not None and manifest.get("returncode") == 0


# ---------------------------------------------------------------------------------------------
# the stage cache: versions, the current link, shared leases, one builder at a time

CURRENT = "current"
BUILD_LOCK = ".build.lock"
VERSION_PREFIX = "v-"


def current(slot: Path) -> Path | None:
    """The published version of a stage (its run folder), when there is a complete one."""
    try:
        name = os.readlink(slot / CURRENT)
    except OSError:
        return None
    version = slot / name
    return version if is_complete(version) else None


def _lock_file(version: Path) -> Path:
    return version.parent / f".{version.name}.lock"


@dataclass
class Lease:
    """A shared lock on one published version: while it is held, no run deletes that version."""

    dir: Path
    handle: IO[str]

    def release(self) -> None:
        self.handle.close()


def acquire(slot: Path) -> Lease | None:
    """A lease on the current version, or None when the stage has no complete version yet."""
    for _ in range(10):
        version = current(slot)
        if version is None:
            return None
        handle = open(_lock_file(version), "a+", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_SH)  # waits only while a builder is deleting it (then it is gone)
        if is_complete(version):
            return Lease(version, handle)
        handle.close()  # deleted between reading the link and locking it: read the link again
    return None


def collect(slot: Path) -> list[Path]:
    """Delete the versions nobody reads (not current, no lease) and dead builders' folders, keeping each one's
    train.log under SLOT/logs/ (a build that crashed leaves nothing else); the caller holds the build lock, so no
    build is in progress. Returns what was deleted."""
    try:
        live = os.readlink(slot / CURRENT)
    except OSError:
        live = None
    gone = []
    for version in sorted(p for p in slot.glob(f"{VERSION_PREFIX}*") if p.is_dir() and p.name != live):
        handle = open(_lock_file(version), "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # a run is reading it: the next build collects it
            continue
        try:
            log = version / "train.log"
            if log.is_file():  # a dead build's log is the only record of why it died: kept beside the slot
                kept = slot / "logs"
                kept.mkdir(exist_ok=True)
                shutil.copy2(log, kept / f"{version.name}.train.log")
            shutil.rmtree(version, ignore_errors=True)
            _lock_file(version).unlink(missing_ok=True)
            gone.append(version)
        finally:
            handle.close()
    return gone


@dataclass
class Build:
    """A new version of a stage being built in its own folder; publish() makes it the current one."""

    slot: Path
    dir: Path

    def publish(self) -> None:
        """Atomically point `current` at this version (a link renamed over the old one), then delete the
        versions no run is reading."""
        link = self.slot / f".{CURRENT}-{os.getpid()}"
        link.unlink(missing_ok=True)
        os.symlink(self.dir.name, link)
        os.replace(link, self.slot / CURRENT)
        collect(self.slot)


@contextmanager
def building(slot: Path, stage: str, say: Callable[[str], None] = print) -> Iterator[Build]:
    """Hold the stage's build lock (waiting, with a line saying so, while another run builds it) and
    hand out a fresh version folder to build in. Nothing points at it until Build.publish()."""
    slot.mkdir(parents=True, exist_ok=True)
    handle = open(slot / BUILD_LOCK, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            say(f"{stage}: another repro run (pid {holder}) is building this stage in {slot}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        collect(slot)
        # a name no earlier version had: a reader's lease file never names two versions
        yield Build(slot, slot / f"{VERSION_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    finally:
        handle.close()


def manifest_sha256(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "manifest.json").read_bytes()).hexdigest()


@dataclass(frozen=True)
class Upstream:
    """What a stage started from: recorded in its manifest."""

    stage: str
    key: str
    run_dir: Path
    input_path: Path
    manifest_sha256: str
    reused: bool
    needs: Needs | None = None
    output: Path | None = None  # the stage's own output (input_path is it, or what needs.then made of it)
    transform_key: str | None = None

    def as_manifest(self) -> dict:
        out = {"stage": self.stage, "key": self.key, "run_dir": str(self.run_dir), "input": str(self.input_path),
               "manifest_sha256": self.manifest_sha256, "reused": self.reused}
        if self.needs is not None:
            out.update({"flag": self.needs.flag, "find": self.needs.find})
            if self.needs.find == "published_model":
                out["hub_id"] = self.needs.path
        if self.transform_key:
            out["then"] = {"builder": self.needs.then.builder, "key": self.transform_key, "from": str(self.output)}
        return out

    @property
    def hub_override(self) -> dict[str, str]:
        """{hub id: folder} for a published_model input (the twin asset map resolves the id to it)."""
        if self.needs is not None and self.needs.find == "published_model":
            return {self.needs.path: str(self.input_path)}
        return {}


def transform(recipe: Recipe, needs: Needs, key: str, path: Path) -> tuple[Path, str]:
    """needs.then applied to a stage output, built once into the asset cache (harness/assets/cache.py):
    keyed by the builder module and its ASSET_INPUTS, the params and the predecessor's stage key."""
    spec = AssetSpec(name=f"{recipe.id}-from-{needs.stage}", kind="model", builder=needs.then.builder,
                     params=dict(needs.then.params), deps=(needs.stage,))
    tkey = asset_key(spec, {needs.stage: key})
    built = build_one(spec, tkey, {needs.stage: path}, CACHE_DIR / "assets")
    return built.root, tkey


def upstream_of(recipe: Recipe, run_dir: Path, key: str, reused: bool, needs: Needs | None = None) -> Upstream:
    needs = needs or recipe.needs_list[0]
    up = catalog.get(needs.stage)
    path = resolve_input(recipe, output_dir(up, run_dir), needs)
    if needs.then is None:
        return Upstream(up.id, key, run_dir, path, manifest_sha256(run_dir), reused, needs, path)
    made, tkey = transform(recipe, needs, key, path)
    return Upstream(up.id, key, run_dir, made, manifest_sha256(run_dir), reused, needs, path, tkey)
