"""Build (or find) one pinned upstream environment: uv resolves its requirements to a lock as of its
`exclude_newer` day, and the environment is cached under REPRO_CACHE/envs/<sha256 of the lock>.

Why a lock first: the hash of what is installed, not of what was asked for, names the environment; the run
manifest records the lock and its hash, so two runs with the same hash ran on the same packages. Never
installs into repro's own environment (every uv call names the target interpreter)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from repro.catalog.upstream_env import UpstreamEnv
from repro.base.errors import EXIT_FAILED, ReproError

STAMP = ".repro-env.json"  # written last: an environment without it is incomplete and rebuilt


@dataclass(frozen=True)
class BuiltEnv:
    name: str
    root: Path
    lock: str
    lock_sha256: str
    built: bool  # False: found in the cache

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def manifest(self) -> dict:
        return {"name": self.name, "path": str(self.root), "lock_sha256": self.lock_sha256,
                "lock": self.lock.splitlines()}


def cache_root() -> Path:
    from repro.base.paths import CACHE_DIR  # lazy: a later stage or a heavy import, only when this runs

    return CACHE_DIR.resolve() / "envs"


def uv() -> str:
    """The uv that repro's own environment installs (the `uv` package, a dependency of the twin extra), else
    one on PATH: CI runs pytest from an environment whose bin/ is not on PATH."""
    try:
        from uv import find_uv_bin  # optional dependency: only where the twin extra is installed

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    exe = shutil.which("uv")
    if exe is None:
        raise ReproError("uv is not installed: the upstream environments are built with uv "
                         "(pip install -c constraints-cpu.txt -e '.[twin]', or pip install uv)")
    return exe


def packages(env: UpstreamEnv, cuda: bool = False) -> list[str]:
    return [*env.packages, *(env.cuda_packages if cuda else [])]


def requirements_text(env: UpstreamEnv, cuda: bool = False) -> str:
    return "".join(p + "\n" for p in packages(env, cuda))


def spec_sha256(env: UpstreamEnv, cuda: bool = False) -> str:
    """What the lock is resolved from: requirements, python, the day; a changed spec re-resolves."""
    spec = {"packages": packages(env, cuda), "python": env.python, "exclude_newer": str(env.exclude_newer)}
    if env.exclude_newer_package:
        spec["exclude_newer_package"] = {k: str(v) for k, v in sorted(env.exclude_newer_package.items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cutoff_argv(env: UpstreamEnv) -> list[str]:
    out = ["--exclude-newer", str(env.exclude_newer)]
    for name, day in sorted(env.exclude_newer_package.items()):
        out += ["--exclude-newer-package", f"{name}={day}"]
    return out


def compile_argv(env: UpstreamEnv, out: Path) -> list[str]:
    return [uv(), "pip", "compile", "-", "--quiet", "--no-header", "--python-version", env.python,
            *cutoff_argv(env), "-o", str(out)]


def install_argv(env: UpstreamEnv, root: Path, lock: Path) -> list[list[str]]:
    """uv venv, then exactly the lock (uv pip sync) into that venv's interpreter."""
    return [[uv(), "venv", "--quiet", "--python", env.python, str(root)],
            [uv(), "pip", "sync", "--quiet", "--python", str(root / "bin" / "python"),
             *cutoff_argv(env), str(lock)]]


def lock(env: UpstreamEnv, cuda: bool = False) -> str:
    """The resolved lock (cached by spec: re-resolving needs the index and could drift)."""
    path = cache_root() / "locks" / f"{env.name}-{spec_sha256(env, cuda)[:16]}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        _run(compile_argv(env, tmp), stdin=requirements_text(env, cuda), what=f"resolving {env.name}")
        tmp.replace(path)
    return path.read_text(encoding="utf-8")


def lock_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def env_dir(sha: str) -> Path:
    return cache_root() / sha[:16]


def is_complete(root: Path, sha: str) -> bool:
    stamp = root / STAMP
    return stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("lock_sha256") == sha


def ensure(env: UpstreamEnv, quiet: bool = False, cuda: bool = False) -> BuiltEnv:
    """The environment for `env`, built when missing (uv's own cache makes a rebuild take seconds); cuda: with
    its cuda_packages (another lock, so another environment)."""
    text = lock(env, cuda)
    sha = lock_sha256(text)
    root = env_dir(sha)
    with _locked(root.with_suffix(".lock")):
        if is_complete(root, sha):
            return BuiltEnv(env.name, root, text, sha, built=False)
        if root.exists():
            shutil.rmtree(root)  # an interrupted build
        lock_file = root.with_suffix(".txt")
        lock_file.write_text(text, encoding="utf-8")
        if not quiet:
            print(f"{env.name}: building its environment in {root} (lock sha256 {sha[:16]})", flush=True)
        start = time.monotonic()
        for argv in install_argv(env, root, lock_file):
            _run(argv, what=f"building {env.name}")
        (root / STAMP).write_text(json.dumps({"name": env.name, "lock_sha256": sha, "repo": env.repo,
                                              "commit": env.commit, "built_s": round(time.monotonic() - start, 1)},
                                             indent=1) + "\n", encoding="utf-8")
    return BuiltEnv(env.name, root, text, sha, built=True)


@contextmanager
def _locked(path: Path):
    """One builder per environment at a time (two runs may ask for it at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ReproError(f"{what} failed (exit {proc.returncode}): {' '.join(argv[:4])} ...: {last[:300]}",
                         EXIT_FAILED)
