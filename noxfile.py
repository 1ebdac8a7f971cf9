"""nox sessions: `nox -s repro-<recipe id>` for every recipe, plus tests, lint, benchmarks and gpu-ci.

All sessions share one virtual environment (.nox/_repro-env): 32 recipe sessions with a private
1.7 GB torch stack each would be absurd. It is rebuilt when pyproject.toml or the constraints change.
On a machine without an NVIDIA GPU the CPU build of torch is pinned by constraints-cpu.txt, so no
resolver step can pull the CUDA stack.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "_repro-env"
EXTRAS = "twin,verify,test"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _has_gpu() -> bool:
    """The suite's one device rule (repro/device.py, standard library only), honouring REPRO_FORCE_CPU."""
    sys.path.insert(0, str(ROOT))
    from repro.base.device import has_nvidia_gpu

    return has_nvidia_gpu()


def _stamp() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints-cpu.txt"):
        h.update((ROOT / name).read_bytes())
    h.update(b"gpu" if _has_gpu() else b"cpu")
    return h.hexdigest()[:16]


def _bin(name: str) -> str:
    return str(ENV / ("Scripts" if os.name == "nt" else "bin") / name)


def _ensure_env(session: nox.Session) -> None:
    """Create or refresh the shared environment; a stamp file makes the second session instant."""
    stamp = ENV / ".repro-stamp"
    if stamp.is_file() and stamp.read_text() == _stamp():
        return
    session.log(f"building the shared environment {ENV}")
    session.run(sys.executable, "-m", "venv", "--clear", str(ENV), external=True)
    session.run(_bin("python"), "-m", "pip", "install", "-q", "-U", "pip", external=True)
    install = [_bin("python"), "-m", "pip", "install", "-q"]
    if not _has_gpu():
        install += ["-c", str(ROOT / "constraints-cpu.txt")]
    session.run(*install, "-e", f".[{EXTRAS}]", external=True)
    stamp.write_text(_stamp())


def _repro(session: nox.Session, *args: str) -> None:
    session.run(_bin("repro"), *args, external=True, env={"PYTHONUNBUFFERED": "1"})


def _recipe_ids() -> list[str]:
    return sorted(p.stem for p in ROOT.glob("recipes/*/*.yaml")
                  if not p.parent.name.startswith("_") and not p.stem.startswith("_"))  # _twin.yaml: family defaults


for _rid in _recipe_ids():

    def _session(session: nox.Session, rid: str = _rid) -> None:
        _ensure_env(session)
        _repro(session, "run", rid, *session.posargs)

    nox.session(name=f"repro-{_rid}", default=False)(_session)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CPU; twins included). Extra arguments go to pytest."""
    _ensure_env(session)
    session.run(_bin("python"), "-m", "pytest", *(session.posargs or ["-q"]), external=True)


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    """Every recipe against its own contract."""
    _ensure_env(session)
    _repro(session, "lint")


@nox.session(default=False)
def benchmarks(session: nox.Session) -> None:
    """Print the speed figures the issues set targets for (plan, parse, twins)."""
    _ensure_env(session)
    for script in sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py")):
        session.run(_bin("python"), str(script), external=True)


@nox.session(default=False)
def slurm(session: nox.Session) -> None:
    """Only the Slurm lane (a real single-host Slurm; needs root and apt, skips with the reason otherwise).
    `nox -s tests` runs it too."""
    _ensure_env(session)
    session.run(_bin("python"), "-m", "pytest", "-m", "slurm", *(session.posargs or ["-q"]), external=True)


@nox.session(name="gpu-ci", default=False)
def gpu_ci(session: nox.Session) -> None:
    """The single-GPU lane: every twin on this GPU (repro gpu-ci; `-- --dry-run` lists it on any machine).
    Without a GPU and without --dry-run it refuses in one line and runs nothing."""
    if "--dry-run" not in session.posargs and not _has_gpu():
        session.error("gpu-ci: no NVIDIA GPU here (no nvidia-smi, or REPRO_FORCE_CPU is set); the GPU lane never "
                      "runs CPU twins. 'nox -s gpu-ci -- --dry-run' lists what it would run")
    _ensure_env(session)
    _repro(session, "gpu-ci", *session.posargs)


@nox.session(default=False)
def mutants(session: nox.Session) -> None:
    """The full mutant set: `repro mutate` for every twin that declares mutants (each mutant is one twin run;
    about an hour on the 2-core CI machine), matrices under runs/mutants/<id>; then the table
    (tests/benchmarks/bench_mutants.py). The per-PR set is the slow test in tests/test_mutate.py.
    `nox -s mutants -- ID ...` runs only those recipes."""
    _ensure_env(session)
    sys.path.insert(0, str(ROOT))
    from repro.catalog import loader

    ids = session.posargs or sorted(r.id for r in loader.load_all().values() if r.twin and r.twin.mutants)
    failed = []
    for rid in ids:
        try:
            _repro(session, "mutate", rid, "--out", str(ROOT / "runs" / "mutants" / rid))
        except nox.command.CommandFailed:
            failed.append(rid)
    session.run(_bin("python"), str(ROOT / "tests" / "benchmarks" / "bench_mutants.py"), str(ROOT / "runs" / "mutants"),
                external=True)
    if failed:
        session.error(f"mutant matrix failed for {', '.join(failed)}")
