"""The orchestrator: everything that runs a twin goes through here (`repro run`, `repro golden record`,
`repro equivalence`, the tests and the benchmarks); the CLI only parses arguments and prints.

A run, in order:
1. upstreams(): a chained recipe's stages (its `needs`), each reused from the stage cache when its key
   matches or built first, recursively, by this same module (repro.twin.chain keys and finds them);
2. runner.prepare(): the immutable TwinRun (what, where, how) under the folder's lock;
3. execute(): the launch, with the out-of-memory retry at half the per-device batch (repro.plan.retry),
   or node groups (repro.twin.nodes) for a multi-node twin; the result is a TwinResult;
4. conclude(): the manifest, the golden lookup, the verdict (repro.twin.verdict) and its files
   (repro.twin.report), made and written here and nowhere else; the caller gets an Outcome to print.
Golden recording (record_golden) and the equivalence set (equivalence) reuse steps 1-3.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from repro.base.contract import FAULT_ENV
from repro.base.errors import ReproError
from repro.base.metrics import read_jsonl
from repro.catalog import loader as catalog
from repro.catalog.schema import Recipe, TwinGeometry
from repro.plan import retry
from repro.base.paths import CACHE_DIR
from repro.twin import chain, diskspace, golden, launch, mutate, nodes, outdir, preflight, progress, readback, runner
from repro.twin.equivalence import batches, compare, layouts, same_length
from repro.twin.report import mutants_markdown, write_outputs
from repro.twin.runner import TwinResult, TwinRun
from repro.twin.verdict import evaluate


@dataclass(frozen=True)
class Outcome:
    """A finished twin run as the CLI prints it: its folder, manifest and verdict (verdict.json)."""

    recipe: Recipe
    out: Path
    manifest: dict
    verdict: dict

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])


Printer = Callable[[Outcome], None]


def layout(recipe: Recipe, name: str) -> TwinGeometry:
    """The twin geometry `name` names: the twin block's own or one of its equivalence layouts (the suite shows
    those train the same curve), never an arbitrary split."""
    runner.require_twin(recipe)
    own = recipe.twin.geometry
    known = [own] + [g for g in (recipe.twin.equivalence.layouts if recipe.twin.equivalence else [])
                     if g.effective == own.effective]
    for g in known:
        if g.name == name:
            return g
    names = list(dict.fromkeys(g.name for g in known))
    raise ReproError(f"{recipe.id}: --geometry {name} is not a layout of this twin; of the same effective batch "
                     f"({own.effective}) its twin block and equivalence block declare {', '.join(names)}")


# ---------------------------------------------------------------------------------------------
# 1. the stages a chained recipe starts from


def upstreams(recipe: Recipe, rebuild: bool = False, echo: bool = False, quiet: bool = True,
              memo: dict | None = None, built: set | None = None, printer: Printer | None = None,
              held: ExitStack | None = None) -> list:
    """Every stage `recipe` starts from (one per `needs` entry), each built first when missing
    (recursively) or reused when cached; [] for a recipe that needs none. Each stage's version is leased
    (a shared lock) until `held` closes, so no other run deletes it meanwhile; without `held` the leases
    last as long as this process. `built`: the stages this invocation already (re)built, so a stage two
    others need (--chain) is rebuilt once."""
    memo = {} if memo is None else memo
    built = set() if built is None else built
    out = []
    for needs in recipe.needs_list:
        up = catalog.get(needs.stage)
        key = chain.stage_key(up, memo)
        slot = chain.stage_dir(up, key)
        fresh_build = rebuild and up.id not in built
        lease = None if fresh_build else chain.acquire(slot)
        if lease is None:
            with chain.building(slot, up.id) as build:
                # another run may have built it while this one waited for the lock
                lease = None if fresh_build else chain.acquire(slot)
                if lease is None:
                    print(f"{recipe.id} starts from {up.id}: building that stage first in {build.dir}")
                    ups = upstreams(up, rebuild, echo, quiet, memo, built, printer, held)
                    outcome = run_twin(up, build.dir, [], echo=echo, fresh=True, quiet=quiet, upstream_stages=ups,
                                       printer=printer)
                    if not chain.is_complete(build.dir):
                        passed = "passed" if outcome is not None and outcome.passed else "did not pass"
                        raise ReproError(f"{up.id}: the upstream stage did not finish ({passed}); "
                                         f"see {build.dir / 'train.log'}")
                    build.publish()
                    lease = chain.acquire(slot)  # this build holds the lock: current is the version just built
                    built.add(up.id)
                    reused = False
                else:
                    reused = True
        else:
            reused = True
        if held is not None:
            held.callback(lease.release)
        else:
            _HELD.append(lease)
        if reused:
            print(f"{recipe.id} starts from {up.id}: reusing the cached stage {lease.dir} (key {key[:16]} matches: "
                  "same recipe, twin assets, trainer code, packages and upstream stages)")
        out.append(chain.upstream_of(recipe, lease.dir, key, reused=reused, needs=needs))
    for u in out:
        if u.transform_key:
            print(f"{recipe.id}: {u.needs.flag} takes {u.stage}'s output through {u.needs.then.builder} "
                  f"(cached by key {u.transform_key[:16]}): {u.input_path}")
    return out


#: leases taken without an ExitStack (prepare() for tests and benchmarks): held until the process ends
_HELD: list[chain.Lease] = []


def prepare(recipe: Recipe, out: Path, sets: list[str] | None = None, **kwargs) -> TwinRun:
    """runner.prepare with the recipe's stages resolved first (built when missing, leased until this
    process ends): for callers that run one twin by hand (tests, benchmarks)."""
    return runner.prepare(recipe, out, sets, upstreams=upstreams(recipe), **kwargs)


# ---------------------------------------------------------------------------------------------
# 2-4. one twin: prepare, execute (with retries or node groups), conclude


def run_twin(recipe: Recipe, out: Path, sets: list[str], echo: bool = False, fresh: bool = False,
             quiet: bool = True, rebuild_chain: bool = False, node_groups: list | None = None,
             geometry: TwinGeometry | None = None, upstream_stages: list | None = None,
             printer: Printer | None = None) -> Outcome | None:
    """Run the twin of `recipe` in `out` and conclude it; None for an invocation that ran no node 0
    (a multi-node twin's other node groups: node 0 writes the verdict). `printer` sees every outcome,
    the stages built on the way included. Before anything trains, the files it will read back are checked
    (repro.twin.preflight); a full disk is one line naming the folder (repro.twin.diskspace)."""
    if upstream_stages is None:  # the invocation's own recipe (a stage built on the way was checked with it)
        preflight.check(recipe, out, fresh)
    with diskspace.paths_named({"--out": out, "REPRO_CACHE": CACHE_DIR}), ExitStack() as held:
        # held: the leases on the stages it starts from, released when it ends
        ups = upstream_stages if upstream_stages is not None else upstreams(recipe, rebuild_chain, echo, quiet,
                                                                            printer=printer, held=held)
        outcome = _run_one(recipe, out, sets, echo, fresh, quiet, node_groups, geometry, ups)
    if outcome is not None and printer is not None:
        printer(outcome)
    return outcome


def _run_one(recipe: Recipe, out: Path, sets: list[str], echo: bool, fresh: bool, quiet: bool,
             node_groups: list | None, geometry: TwinGeometry | None, ups: list) -> Outcome | None:
    if node_groups is not None:
        outcome = run_node_groups(recipe, out, sets, node_groups, fresh, quiet or echo, echo, ups)
    else:
        with outdir.claimed(out):
            run = runner.prepare(recipe, out, sets, geometry=geometry, fresh=fresh, upstreams=ups)
            for u in ups:
                named = f" ({u.needs.path})" if u.needs is not None and u.needs.find == "published_model" else ""
                print(f"{recipe.id}: {u.needs.flag}{named} <- {u.input_path}")
            print(f"{recipe.id}: running the scaled-down twin in {out}"
                  + (f" (resuming from {run.resumed['from']})" if run.resumed else ""))
            with progress.tracking(f"{recipe.id} twin", {"": out}, progress.expected_steps(recipe.id),
                                   quiet=quiet or echo):
                result = execute_with_retry(run, sets, echo, ups)
            outcome = conclude(result)
    return outcome


def conclude(result: TwinResult) -> Outcome:
    """The one place a verdict is made and written: manifest.json, then the checks against the golden of
    this environment, then verdict.json, report.md and the chart."""
    out = result.out_dir
    manifest = runner.manifest(result)
    runner.write_json(out / "manifest.json", manifest)
    key = manifest["env_key"]
    ref = golden.find(result.recipe.id, key)
    verdict = write_outputs(result, evaluate(result, ref, key), manifest, ref)
    return Outcome(result.recipe, out, manifest, verdict)


def execute_with_retry(run: TwinRun, sets: list[str], echo: bool, ups: list | None = None) -> TwinResult:
    """Out of memory: retry at half the per-device batch (the planner's rule decides), recorded."""
    retries: list[dict] = []
    while True:
        try:
            done = runner.execute(run, echo=echo)
            return TwinResult(done.run, done.returncode, done.wall_s, done.records, done.diverged, tuple(retries),
                              done.resumed)
        except ReproError:
            if not retry.is_oom(run.out_dir / "train.log"):
                raise
            smaller = retry.halved(run.recipe, run.geometry)
            retries.append({"geometry": run.geometry.name, "error": "out of memory", "retry_with": smaller.name})
            print(f"{run.recipe.id}: out of memory at {run.geometry.name}; retrying at {smaller.name} "
                  "(same effective batch)")
            run = runner.prepare(run.recipe, run.out_dir, sets, geometry=smaller, fresh=True, upstreams=ups or [])


def run_node_groups(recipe: Recipe, out: Path, sets: list[str], node_groups: list, fresh: bool, quiet: bool,
                    echo: bool, ups: list | None = None) -> Outcome | None:
    """Several node groups of one twin (all here over loopback, or the one --node-rank names). Each
    process holds its own lock: Slurm runs one `repro run --node-rank R` per node on a shared --out."""
    ranks = [g.rank for g in node_groups]
    with outdir.claimed(out, outdir.lock_name(ranks)):
        runs = nodes.prepare(recipe, out, node_groups, sets, fresh=fresh and 0 in ranks, upstreams=ups)
        print(f"{recipe.id}: running node group(s) {', '.join(map(str, ranks))} of a {node_groups[0].nodes}-node "
              f"twin in {out} (main {node_groups[0].addr}:{node_groups[0].port})")
        with progress.tracking(f"{recipe.id} twin", {"": out}, progress.expected_steps(recipe.id),
                               quiet=quiet or 0 not in ranks):
            result = nodes.execute(runs, echo=echo)
        if result is None:
            print(f"{recipe.id}: node group {runs[0].node.rank} finished; node 0 writes the verdict")
            return None
        return conclude(result)


# ---------------------------------------------------------------------------------------------
# goldens and equivalence


def record_golden(recipe: Recipe, source: Path | None = None, out: Path | None = None,
                  quiet: bool = True) -> tuple[Path, int, str]:
    """Run the twin (or read the finished run `source`) and store its curve as the golden of this
    environment; (path, steps, environment key). Refuses a dirty tree before spending the run."""
    sha, dirty = runner.git_state()
    if dirty:
        raise ReproError("refusing to record golden values from a dirty working tree (or outside git): "
                         "commit your changes first, so the golden names the code that made it")
    runner.require_twin(recipe)
    if source is not None:
        manifest_path = source / "manifest.json"
        if not manifest_path.is_file():
            raise ReproError(f"{source}: not a twin run directory (no manifest.json)")
        manifest = readback.read_json(manifest_path, "run manifest", "pass the folder of a finished twin run")
        if not isinstance(manifest, dict) or manifest.get("recipe") != recipe.id or manifest.get("overrides"):
            raise ReproError(f"{source}: a golden must come from a plain twin run of {recipe.id} (no --set overrides)")
        g, plan = recipe.twin.geometry, manifest.get("plan", {})
        ran = (plan.get("processes"), plan.get("per_device_batch"), plan.get("grad_accum"))
        if ran != (g.processes, g.per_device, g.grad_accum):
            raise ReproError(f"{source}: ran at {'x'.join(map(str, ran))}, not the twin block's {g.name}: a golden "
                             "is recorded at the twin's own geometry (another layout, --geometry, is compared with it)")
        records = list(read_jsonl(next(source.glob("train/*/metrics.jsonl"))))
        key, assets = manifest["env_key"], manifest.get("assets", {})
    else:
        out = out or Path(f"runs/{recipe.id}-golden").resolve()
        with ExitStack() as held, outdir.claimed(out), progress.tracking(f"{recipe.id} golden", {"": out},
                                                    progress.expected_steps(recipe.id), quiet=quiet):
            ups = upstreams(recipe, held=held)
            result = runner.execute(runner.prepare(recipe, out, [], fresh=True, upstreams=ups), echo=False)
        manifest = runner.manifest(result)
        records, key, assets = list(result.records), manifest["env_key"], manifest["assets"]
    provenance = {k: manifest[k] for k in ("project_git_sha", "project_tree_dirty", "packages", "hardware",
                                           "plan", "command", "wall_s")}
    provenance["project_git_sha"], provenance["project_tree_dirty"] = sha, dirty
    path = golden.record(recipe.id, records, recipe.twin.golden, key, assets, provenance)
    return path, len(records), key


def equivalence(recipe: Recipe, out: Path, quiet: bool = True) -> dict:
    """Train every layout of the twin's equivalence set and its negative control, compare their curves
    with the reference layout's (repro.twin.equivalence), write OUT/equivalence.json."""
    layouts(recipe)  # no equivalence block: refused before any stage is built
    with ExitStack() as held:
        return _equivalence(recipe, out, quiet, upstreams(recipe, held=held))


def _equivalence(recipe: Recipe, out: Path, quiet: bool, ups: list) -> dict:
    plan = layouts(recipe)
    spec = recipe.twin.equivalence
    # Start-up (imports) dominates each run and results do not depend on timing, so oversubscribe
    # the cores; REPRO_EQUIVALENCE_SLOTS bounds the concurrent processes.
    slots = int(os.environ.get("REPRO_EQUIVALENCE_SLOTS", 4 * (os.cpu_count() or 1)))
    t0 = time.perf_counter()
    curves: dict[str, list[float]] = {}
    for group in batches(plan, slots):
        runs = [runner.prepare(recipe, out / lay.name, geometry=lay.geometry, extra=list(lay.extra), fresh=True,
                               upstreams=ups) for lay in group]
        names = {lay.name: out / lay.name for lay in group}
        with launch.supervised(), progress.tracking(f"{recipe.id} equivalence", names,
                                                    progress.expected_steps(recipe.id), quiet=quiet):
            started = [(r, launch.start(r.argv, r.env, r.out_dir / "train.log", pipe=False, cwd=r.cwd)) for r in runs]
            codes = [(r, launch.stream(handle, echo=False)) for r, handle in started]
        for r, rc in codes:
            if rc != 0:
                raise ReproError(f"{recipe.id}: equivalence run {r.out_dir.name} exited {rc}; "
                                 f"see {r.out_dir / 'train.log'}")
            curves[r.out_dir.name] = golden.curve(list(read_jsonl(runner.metrics_path(r))), spec.metric)[1]
    ref = plan[0]
    rows = []
    for lay in plan:
        same_length(recipe, lay, len(curves[ref.name]), len(curves[lay.name]))
        stats = compare(curves[ref.name], curves[lay.name])
        within = stats["max_rel"] <= spec.max_rel and stats["mean_rel"] <= spec.mean_rel
        ok = within if lay.role != "negative control" else not within
        rows.append({"layout": lay.name, "role": lay.role, "why": lay.why, "passed": ok, **stats})
    result = {
        "recipe": recipe.id, "metric": spec.metric, "reference": ref.name,
        "tolerance": {"max_rel": spec.max_rel, "mean_rel": spec.mean_rel},
        "passed": all(r["passed"] for r in rows), "layouts": rows, "wall_s": round(time.perf_counter() - t0, 1),
        "env_key": runner.env_key(),
    }
    runner.write_json(out / "equivalence.json", result)
    return result

# ---------------------------------------------------------------------------------------------
# the mutant matrix


def mutants(recipe: Recipe, out: Path, only: list[str] | None = None) -> dict:
    """The plain twin and each mutant its block declares (or `only` names), each in OUT/<name> and concluded
    like any run (its own verdict and report), evaluated check by check (repro.twin.mutate); a reshaped
    mutant is refused. Writes OUT/mutants.json and OUT/mutants.md and appends the matrix to the plain run's
    report.md; returns the matrix."""
    chosen = mutate.select(recipe, only)
    t0 = time.perf_counter()
    with ExitStack() as held:  # the leases on the stages it starts from, released when it ends
        ups = upstreams(recipe, held=held)
        plain = _mutant_row(recipe, out, None, ups)
        rows = []
        for m in chosen:
            row = _mutant_row(recipe, out, m, ups)
            mutate.refuse_reshaped(recipe, plain, row)
            rows.append(row)
    result = {**mutate.matrix(recipe, plain, rows), "wall_s": round(time.perf_counter() - t0, 1),
              "env_key": runner.env_key()}
    runner.write_json(out / "mutants.json", result)
    md = mutants_markdown(result)
    (out / "mutants.md").write_text(md, encoding="utf-8")
    with open(out / mutate.PLAIN / "report.md", "a", encoding="utf-8") as fh:
        fh.write("\n" + md)
    return result


def rescore(recipe: Recipe, out: Path) -> dict:
    """The matrix again over the runs a `repro mutate` left in OUT, with today's checks and references, without
    training: when a reference or a check is added after the runs (a reference recorded later must still be shown
    able to fail). The runs' own commit stays in each manifest; the matrix records that it was rescored."""
    old = readback.read_json(out / "mutants.json", "mutant matrix", "run repro mutate first (without --rescore)")
    by_name = {m.name: m for m in recipe.twin.mutants}
    plain = _recorded_row(recipe, out, None)
    rows = []
    for m in old["mutants"]:
        if m["name"] not in by_name:
            raise ReproError(f"{out / 'mutants.json'}: mutant {m['name']} is no longer declared by {recipe.id}; "
                             "run repro mutate again")
        rows.append(_recorded_row(recipe, out, by_name[m["name"]]))
    result = {**mutate.matrix(recipe, plain, rows), "wall_s": old.get("wall_s"), "env_key": old.get("env_key"),
              "rescored": {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "runs_commit": readback.read_json(out / mutate.PLAIN / "manifest.json",
                                                             "run manifest", "run repro mutate again").get("project_git_sha")}}
    runner.write_json(out / "mutants.json", result)
    (out / "mutants.md").write_text(mutants_markdown(result), encoding="utf-8")
    return result


def _recorded_row(recipe: Recipe, out: Path, mutant) -> mutate.Row:
    """One row of the matrix from a finished run folder (its manifest's asset keys and divergence, its records)."""
    folder = out / (mutant.name if mutant else mutate.PLAIN)
    manifest = readback.read_json(folder / "manifest.json", "run manifest", "run repro mutate again")
    run = TwinRun(recipe, folder, recipe.twin.geometry, [], {}, [], dict(manifest["assets"]), False)
    result = TwinResult(run, 0, 0.0, tuple(read_jsonl(runner.metrics_path(run))), manifest.get("diverged"))
    key = manifest["env_key"]
    return mutate.row(mutant, result, golden.find(recipe.id, key), key)


def _mutant_row(recipe: Recipe, out: Path, mutant, ups: list) -> mutate.Row:
    """One run of the matrix in OUT/<name>: the twin with the mutant's --set or injected fault."""
    name = mutant.name if mutant else mutate.PLAIN
    run = runner.prepare(recipe, out / name, extra=list(mutant.set) if mutant else None, fresh=True, upstreams=ups)
    if mutant is not None and mutant.fault:
        run = replace(run, env={**run.env, FAULT_ENV: mutant.fault})
    with progress.tracking(f"{recipe.id} {name}", {"": out / name}, progress.expected_steps(recipe.id), quiet=True):
        result = runner.execute(run, echo=False)
    outcome = conclude(result)
    if mutant is not None:
        runner.write_json(out / name / "mutant.json", mutant.model_dump())
    key = outcome.manifest["env_key"]
    return mutate.row(mutant, result, golden.find(recipe.id, key), key)
