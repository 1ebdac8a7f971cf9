"""Debian packages some tests need (shellcheck, slurm-wlm, munge, chromium): present, or installed with apt when
the tests run as root with apt-get (CI), or the test is skipped with the reason."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

PACKAGES = {"shellcheck": "shellcheck", "slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge",
            "chromium": "chromium"}


@functools.lru_cache(maxsize=None)
def _install(packages: tuple[str, ...]) -> str | None:
    """None when installed, else why not (one apt-get update per test session)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "not root: cannot apt-get install " + " ".join(packages)
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install " + " ".join(packages)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            return f"{' '.join(argv[:2])} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return None


def require(*commands: str) -> str | None:
    """Make the commands available; return None when they are, else the reason they are not."""
    missing = [c for c in commands if shutil.which(c) is None and not os.path.exists(f"/usr/sbin/{c}")]
    if not missing:
        return None
    # one apt call for everything any test may need, so a second test does not pay apt-get update again
    why = _install(tuple(sorted(set(PACKAGES.values()))))
    if why:
        return why
    still = [c for c in commands if shutil.which(c) is None and not os.path.exists(f"/usr/sbin/{c}")]
    return f"installed, but still not found: {', '.join(still)}" if still else None
