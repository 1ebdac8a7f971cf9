"""The process-group guard between `repro` and a launcher: training processes die with the CLI.

`python -m repro.twin.guard FD -- ARGV...` starts ARGV as the leader of a new session (so a terminal's
Ctrl-C reaches only `repro`, which decides what happens) and watches FD, the read end of a pipe the
CLI holds open. When the pipe closes (the CLI exited, was killed with SIGTERM or SIGKILL, or crashed)
the guard terminates the launcher's whole process group (launcher, elastic agent, every rank), then
kills what is left after a grace period. The launchers start their ranks inside that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 5.0


def kill_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM the launcher's process group, then SIGKILL whatever is still alive after the grace."""
    pgid = proc.pid  # the launcher leads its own group (start_new_session)

    def gone() -> bool:
        proc.poll()  # reap the launcher so its zombie does not keep the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.05)


def _watch(fd: int, proc: subprocess.Popen) -> None:
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    kill_group(proc)


#: set by a launcher whose child must not see the guard's PYTHONPATH (the real upstream in its own
#: environment: repro's packages stay off its path); its value becomes the child's PYTHONPATH ("" drops it)
CHILD_PYTHONPATH = "REPRO_CHILD_PYTHONPATH"


def child_env(env) -> dict[str, str]:
    out = dict(env)
    if CHILD_PYTHONPATH in out:
        value = out.pop(CHILD_PYTHONPATH)
        out.pop("PYTHONPATH", None)
        if value:
            out["PYTHONPATH"] = value
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m repro.twin.guard FD -- ARGV...", file=sys.stderr)
        return 2
    fd, command = int(argv[0]), argv[2:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the CLI's to handle: it closes the pipe
    proc = subprocess.Popen(command, start_new_session=True, env=child_env(os.environ))
    signal.signal(signal.SIGTERM, lambda *_: kill_group(proc))
    threading.Thread(target=_watch, args=(fd, proc), daemon=True).start()
    rc = proc.wait()
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
