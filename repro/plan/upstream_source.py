"""The upstream's source at its pinned commit: cloned from GitHub by default, or taken from a local snapshot
(--upstream-source PATH or REPRO_UPSTREAM_SOURCE): a folder of snapshots, or one snapshot — a `git archive`
tarball, a git directory, or a checkout — always verified against the pinned commit before it is used.

Why verify: a snapshot is a file someone put there; the pin is the only thing that says what ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from repro.catalog.upstream_env import UpstreamEnv
from repro.base.errors import EXIT_FAILED, ReproError

SOURCE_ENV = "REPRO_UPSTREAM_SOURCE"
MARK = ".repro-source"  # written last into a checkout: the commit and how it was verified


@dataclass(frozen=True)
class Source:
    root: Path
    commit: str
    verified_by: str  # how the commit was checked: "git rev-parse", "tar pax header (git get-tar-commit-id)"
    origin: str  # GitHub URL or the snapshot's path

    def manifest(self) -> dict:
        return {"path": str(self.root), "commit": self.commit, "verified_by": self.verified_by, "origin": self.origin}


def checkouts_root() -> Path:
    from repro.base.paths import CACHE_DIR  # lazy: a later stage or a heavy import, only when this runs

    return CACHE_DIR.resolve() / "upstream"


def tar_commit(path: Path) -> str | None:
    """The commit a `git archive` tarball carries in its pax global header (what git get-tar-commit-id reads)."""
    try:
        with tarfile.open(path) as tar:
            first = tar.next()
            return (tar.pax_headers or {}).get("comment") or (first.pax_headers.get("comment") if first else None)
    except (tarfile.TarError, OSError) as exc:
        raise ReproError(f"{path}: not a readable tar archive ({exc}); give a `git archive` tarball, a git "
                         "directory or a checkout") from None


def _git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def pick(env: UpstreamEnv, given: Path) -> Path:
    """One snapshot from what the user named: itself, or the one in a folder of snapshots named by the pin."""
    if not given.exists():
        raise ReproError(f"--upstream-source {given}: no such file or folder")
    if given.is_dir() and not (given / ".git").exists() and not _is_git_dir(given):
        hits = sorted(p for p in given.iterdir() if p.name.startswith(env.snapshot_name))
        if hits:
            return hits[0]
        others = sorted(p.name for p in given.iterdir() if "@" in p.name)
        if others:
            raise ReproError(f"{given}: no snapshot of {env.snapshot_name} among {len(others)} snapshots "
                             f"({', '.join(others[:4])}...); add it or clone from GitHub (unset {SOURCE_ENV})")
    return given


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def verify(env: UpstreamEnv, snap: Path) -> str:
    """How `snap` is proven to be the pinned commit, or a one-line refusal saying why not."""
    want = env.commit
    if snap.is_file():
        got = tar_commit(snap)
        if got is None:
            raise ReproError(f"{snap}: a tarball without a commit id in its pax header (not `git archive` of a "
                             f"commit); cannot verify it is {env.repo}@{want[:12]}")
        if got != want:
            raise ReproError(f"{snap}: is {got[:12]} (git get-tar-commit-id), not the pinned {want[:12]}")
        return "tar pax header (git get-tar-commit-id)"
    if _is_git_dir(snap) or (snap / ".git").exists():
        got = _git("rev-parse", "HEAD", cwd=snap) if (snap / ".git").exists() else \
            _git("--git-dir", str(snap), "rev-parse", f"{want}^{{commit}}")
        if got != want:
            what = "HEAD" if (snap / ".git").exists() else "the pinned commit"
            raise ReproError(f"{snap}: {what} is {got[:12] or 'missing'}, not the pinned {want[:12]} (git rev-parse)")
        return "git rev-parse"
    if snap.name == env.snapshot_name:
        return "folder name only (not a git checkout: its content is trusted to be the snapshot its name pins)"
    raise ReproError(f"{snap}: a plain folder that is neither a git checkout nor named {env.snapshot_name}; "
                     "cannot verify it is the pinned commit")


def ensure(env: UpstreamEnv, given: str | Path | None = None, quiet: bool = False) -> Source:
    """A checkout of the pinned commit under REPRO_CACHE/upstream/<owner+repo>@<commit> (reused when its
    mark says it is that commit). `given`: --upstream-source, else REPRO_UPSTREAM_SOURCE, else GitHub."""
    given = given or os.environ.get(SOURCE_ENV) or None
    snap = pick(env, Path(given).expanduser().resolve()) if given is not None else None
    how = verify(env, snap) if snap is not None else None  # a named snapshot is checked even when cached
    dest = checkouts_root() / env.snapshot_name
    mark = dest / MARK
    if mark.is_file():
        commit, how, origin = (mark.read_text(encoding="utf-8").splitlines() + ["", "", ""])[:3]
        if commit == env.commit:
            return Source(dest, commit, how, origin)
    if dest.exists():
        shutil.rmtree(dest)  # an interrupted or other copy
    dest.parent.mkdir(parents=True, exist_ok=True)
    if given is None:
        origin = f"https://github.com/{env.repo}.git"
        if not quiet:
            print(f"{env.repo}: cloning {env.commit[:12]} from GitHub into {dest}", flush=True)
        for argv in clone_steps(env, dest):
            if subprocess.run(argv, capture_output=True, text=True).returncode != 0:
                shutil.rmtree(dest, ignore_errors=True)
                raise ReproError(f"{env.repo}: `{' '.join(argv)}` failed; without network give a snapshot with "
                                 f"--upstream-source PATH or {SOURCE_ENV}", EXIT_FAILED)
        how = "git rev-parse"
        if _git("rev-parse", "HEAD", cwd=dest) != env.commit:
            raise ReproError(f"{dest}: the clone is not at {env.commit}", EXIT_FAILED)
    else:
        origin = str(snap)
        if not quiet:
            print(f"{env.repo}: {env.commit[:12]} from {snap} (verified by {how})", flush=True)
        _materialize(env, snap, dest)
    mark.write_text(f"{env.commit}\n{how}\n{origin}\n", encoding="utf-8")
    return Source(dest, env.commit, how, origin)


def clone_steps(env: UpstreamEnv, dest: Path) -> list[list[str]]:
    url = f"https://github.com/{env.repo}.git"
    return [["git", "init", "-q", str(dest)], ["git", "-C", str(dest), "fetch", "-q", "--depth", "1", url, env.commit],
            ["git", "-C", str(dest), "checkout", "-q", "--detach", env.commit]]


def _materialize(env: UpstreamEnv, snap: Path, dest: Path) -> None:
    if snap.is_file():
        dest.mkdir()
        with tarfile.open(snap) as tar:
            tar.extractall(dest, filter="data")
    elif _is_git_dir(snap) and not (snap / ".git").exists():
        dest.mkdir()
        archive = subprocess.run(["git", "--git-dir", str(snap), "archive", env.commit], capture_output=True)
        with tarfile.open(fileobj=__import__("io").BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
    else:
        shutil.copytree(snap, dest, ignore=shutil.ignore_patterns(".git"))
    inner = list(dest.iterdir())
    if len(inner) == 1 and inner[0].is_dir():  # `git archive --prefix NAME/`: the tree is one level down
        top = inner[0].rename(dest.with_name(dest.name + ".prefix"))
        dest.rmdir()
        top.rename(dest)
