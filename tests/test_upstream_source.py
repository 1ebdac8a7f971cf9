"""Upstream source at the pin: every kind of local snapshot is verified against the pinned commit, and
anything that cannot be verified (or is another commit) is refused in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from repro.catalog.upstream_env import UpstreamEnv
from repro.base.errors import ReproError
from repro.plan import upstream_source as source


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path):
    """A tiny git repository with two commits; the env pins the first."""
    r = tmp_path / "repo"
    r.mkdir()
    _git("init", "-q", cwd=r)
    (r / "train.py").write_text("print('one')\n")
    _git("add", ".", cwd=r)
    _git("commit", "-qm", "one", cwd=r)
    first = _git("rev-parse", "HEAD", cwd=r)
    (r / "train.py").write_text("print('two')\n")
    _git("commit", "-qam", "two", cwd=r)
    env = UpstreamEnv(name="t", repo="o/r", commit=first, commit_date="2024-01-01", exclude_newer="2024-01-02",
                      packages=["x"])
    return r, env, _git("rev-parse", "HEAD", cwd=r)


def _archive(r: Path, commit: str, out: Path, prefix: str = "") -> Path:
    args = ["archive", "--format", "tar.gz", "-o", str(out), *([f"--prefix={prefix}/"] if prefix else []), commit]
    _git(*args, cwd=r)
    return out


def test_tarball_is_verified_by_its_pax_header_and_unpacked(tmp_path, repo, monkeypatch):
    r, env, _ = repo
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(source, "checkouts_root", lambda: tmp_path / "cache" / "upstream")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    _archive(r, env.commit, snaps / f"{env.snapshot_name}.tar.gz", prefix=env.snapshot_name)
    got = source.ensure(env, snaps, quiet=True)  # a folder of snapshots: the one the pin names
    assert "pax header" in got.verified_by
    assert (got.root / "train.py").read_text() == "print('one')\n"


def test_tarball_of_another_commit_is_refused(tmp_path, repo):
    r, env, head = repo
    tar = _archive(r, head, tmp_path / f"{env.snapshot_name}.tar.gz")  # right name, wrong content
    with pytest.raises(ReproError, match=f"is {head[:12]}.*not the pinned {env.commit[:12]}"):
        source.verify(env, tar)


def test_git_checkout_and_git_dir_are_verified_by_rev_parse(tmp_path, repo):
    r, env, head = repo
    with pytest.raises(ReproError, match="HEAD is"):
        source.verify(env, r)  # the checkout is at the second commit
    _git("checkout", "-q", env.commit, cwd=r)
    assert source.verify(env, r) == "git rev-parse"
    assert source.verify(env, r / ".git") == "git rev-parse"  # a bare git dir holding the commit


def test_plain_folder_needs_the_pinned_name(tmp_path, repo):
    _, env, _ = repo
    plain = tmp_path / "code"
    plain.mkdir()
    with pytest.raises(ReproError, match="neither a git checkout nor named"):
        source.verify(env, plain)
    named = tmp_path / env.snapshot_name
    named.mkdir()
    assert "name only" in source.verify(env, named)


def test_folder_of_snapshots_without_this_pin_is_refused(tmp_path, repo):
    _, env, _ = repo
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "o+other@abc.tar.gz").write_bytes(b"")
    with pytest.raises(ReproError, match="no snapshot of o\\+r@"):
        source.pick(env, tmp_path / "s")


def test_tarball_without_commit_id_is_refused(tmp_path, repo):
    import tarfile

    _, env, _ = repo
    plain = tmp_path / "x.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(repo[0] / "train.py", arcname="train.py")
    with pytest.raises(ReproError, match="without a commit id"):
        source.verify(env, plain)
