"""The mutant matrix of a twin (`repro mutate`): run the plain twin and each declared mutant (a semantic
fault), evaluate every check on every run, and hold the matrix to three rules: every mutant is killed,
every kill a mutant declares is seen, and every check kills at least one mutant (a check that cannot
fail is a bug). A mutant is compared step for step with the plain run: one that changes the step count
(without diverging) is refused, since any curve check would then fail for the count alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.catalog.schema import INTEGRITY_CHECKS, Mutant, Recipe
from repro.base.errors import EXIT_BAD_INPUT, ReproError
from repro.twin import golden, upstream_ref
from repro.twin.runner import TwinResult
from repro.twin.checks import run_check
from repro.twin.command import require_twin
from repro.twin.overrides import apply_sets
from repro.twin.verdict import divergence, step_sequence
from repro.base.curves import FAIL, PASS, CheckResult
from harness.runtime.faults import FAULTS

PLAIN = "plain"
#: the upstream reference's columns (when the recipe has a committed reference): each '<metric> vs upstream' must
#: kill a mutant like any check; 'steps vs upstream', like step_sequence, cannot (mutants keep the step count)
REFERENCE_SUFFIX, REFERENCE_STEPS = " vs upstream", "steps vs upstream"
#: twin-only switches (e.g. --twin_cp_attention) that a twin trainer strips before the upstream parse
TWIN_SWITCH = "--twin_"
#: cell values of the matrix
KILLED, SURVIVED, NOT_MEASURED = "killed", "survived", "not measured"


def select(recipe: Recipe, only: list[str] | None = None) -> list[Mutant]:
    """The mutants to run (all, or the ones --only names); bad names and unknown faults are bad input."""
    require_twin(recipe)
    mutants = list(recipe.twin.mutants)
    where = f"{recipe.id} twin.mutants"
    if not mutants:
        raise ReproError(f"{where}: this twin declares no mutants; add them (name, why, set | fault, kills)")
    if only:
        names = {m.name for m in mutants}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ReproError(f"--only {', '.join(unknown)}: not a mutant of {recipe.id} (it has {', '.join(sorted(names))})")
        mutants = [m for m in mutants if m.name in only]
    shape = shape_flags(recipe)
    for m in mutants:
        touched = sorted({a.flag for a in m.set} & shape)
        if touched:
            raise ReproError(f"{where}.{m.name}: sets {', '.join(touched)}, which shape the run (batch, steps, "
                             "epochs): a mutant must be compared step for step; break a semantic instead", EXIT_BAD_INPUT)
        if m.fault is not None and m.fault not in FAULTS:
            raise ReproError(f"{where}.{m.name}.fault: {m.fault!r} is not a fault any trainer injects "
                             f"(harness/runtime/faults.py FAULTS: {', '.join(sorted(FAULTS))})")
        entry = [(a.flag, a.values) for a in m.set if not a.flag.startswith(TWIN_SWITCH)]
        if entry:  # the same refusal as --set: a flag the entry point does not know
            apply_sets(recipe, [], entry)
    return mutants


#: flags that set the length of a run in any family (a mutant may not touch them)
STEP_FLAGS = {"--num_train_epochs", "--max_train_steps", "--max_steps", "--train_iters", "--total_episodes",
              "--max_train_samples", "--num_processes", "--nproc_per_node"}


def shape_flags(recipe: Recipe) -> set[str]:
    """The flags that change a run's shape: its batch geometry flags and the step-count flags."""
    f = recipe.batch.flags
    return STEP_FLAGS | {x for x in (f.per_device, f.grad_accum, f.local_batch, f.actors_per_node) if x} \
        | set(f.per_rank_totals)


def outcomes(run: TwinResult, ref: dict | None, key: str) -> dict[str, dict]:
    """check id -> {status, message} for one run: the integrity checks, then each declared check
    (the golden's per-metric results folded into one: it fails when any of them fails)."""
    out: dict[str, dict] = {}

    def put(cid: str, results: list[CheckResult]) -> None:
        failed = [r for r in results if r.status == FAIL]
        status = FAIL if failed else PASS if results and all(r.status == PASS for r in results) else "NOT-MEASURED"
        shown = failed or [r for r in results if r.status != PASS] or results
        out[cid] = {"status": status, "message": "; ".join(f"{r.name}: {r.message}" for r in shown[:2])}

    put("step_sequence", [step_sequence(run)])
    put("no_divergence", [divergence(run)])
    for c in run.recipe.twin.checks:
        if c.kind == "golden":
            # the approximate lane only (each metric's rtol): a mutant must be caught by the tolerance the
            # golden grants another environment, not by a last-digit difference between two CPUs
            put(c.id, golden.compare(list(run.records), ref, run.recipe.twin.golden, key, run.run.asset_keys,
                                     f"expected/golden/{run.recipe.id}", deterministic=False))
        else:
            put(c.id, [run_check(c, list(run.records))])
    # the real upstream's curve is a check too (and the strongest): proven able to fail like the others
    for r in upstream_ref.compare(run.recipe, list(run.records), run.run.asset_keys):
        put(r.name, [r])
    return out


@dataclass
class Row:
    name: str
    why: str
    kills: list[str]
    steps: int
    diverged: bool
    checks: dict[str, dict]


def row(mutant: Mutant | None, result: TwinResult, ref: dict | None, key: str) -> Row:
    """One run of the matrix (the plain one when mutant is None), evaluated check by check."""
    steps = len([r for r in result.records if r.phase == "train"])
    return Row(mutant.name if mutant else PLAIN, mutant.why if mutant else "the twin as declared",
               list(mutant.kills) if mutant else [], steps, result.diverged is not None, outcomes(result, ref, key))


def refuse_reshaped(recipe: Recipe, plain: Row, row: Row) -> None:
    if row.steps != plain.steps and not row.diverged:
        raise ReproError(f"{recipe.id}: mutant {row.name} ran {row.steps} steps, the plain run {plain.steps}: a mutant "
                         "must be compared step for step (change a semantic, not the step count or shape)",
                         EXIT_BAD_INPUT)


def matrix(recipe: Recipe, plain: Row, rows: list[Row]) -> dict:
    """The mutant x check matrix and the three rules' findings (problems empty = passed)."""
    ids = list(plain.checks)
    declared = [c.id for c in recipe.twin.checks if not c.sanity] + [
        c for c in ids if c.endswith(REFERENCE_SUFFIX) and c != REFERENCE_STEPS]
    problems = [f"the plain run fails {cid}: {plain.checks[cid]['message']}" for cid in ids
                if plain.checks[cid]["status"] != PASS]
    cells = {}
    for row in rows:
        cells[row.name] = {cid: KILLED if row.checks[cid]["status"] == FAIL else
                           SURVIVED if row.checks[cid]["status"] == PASS else NOT_MEASURED for cid in ids}
        if KILLED not in cells[row.name].values():
            problems.append(f"mutant {row.name} survived every check")
        for cid in row.kills:
            if cells[row.name][cid] != KILLED:
                problems.append(f"mutant {row.name}: {cid} was expected to kill it and did not "
                                f"({row.checks[cid]['message'][:200]})")
    complete = {m.name for m in recipe.twin.mutants} <= {r.name for r in rows}
    dead = [cid for cid in declared if cid not in INTEGRITY_CHECKS
            and not any(cells[r.name][cid] == KILLED for r in rows)]
    if complete:  # with --only a check may legitimately kill none of the mutants run
        problems += [f"check {cid} kills no mutant: a check that cannot fail is a bug" for cid in dead]
    return {
        "recipe": recipe.id, "checks": ids, "complete": complete,
        "plain": {"steps": plain.steps, "checks": plain.checks},
        "mutants": [{"name": r.name, "why": r.why, "kills": r.kills, "steps": r.steps, "diverged": r.diverged,
                     "cells": cells[r.name], "messages": {c: r.checks[c]["message"] for c in ids
                                                          if cells[r.name][c] == KILLED}} for r in rows],
        "checks_killing_nothing": dead,
        "problems": problems,
        "passed": not problems,
    }
