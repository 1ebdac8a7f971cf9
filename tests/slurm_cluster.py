"""A real single-host Slurm 22.05 cluster for the Slurm lane: munged, slurmctld and slurmd started as
root from a private slurm.conf (SLURM_CONF; /etc is not touched), stopped by the PIDs started here.

The settings are the ones measured to work in a container (research: cpu-feasibility-wave2 §7):
proctrack/linuxproc (no cgroups), task/none, select/cons_tres with CR_Core, no accounting, one node
with the host's CPUs, fresh ports so a leftover daemon cannot answer for ours.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(state: Path, node: str, cpus: int, ctld_port: int, d_port: int) -> str:
    """The whole slurm.conf for one node that is also the controller (pure)."""
    return "\n".join([
        "ClusterName=repro-ci",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={d_port}",
        "AuthType=auth/munge", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "MpiDefault=none", "ReturnToService=2", "MailProg=/bin/true",
        f"StateSaveLocation={state / 'ctld'}", f"SlurmdSpoolDir={state / 'spool'}",
        f"SlurmctldPidFile={state / 'slurmctld.pid'}", f"SlurmdPidFile={state / 'slurmd.pid'}",
        f"SlurmctldLogFile={state / 'slurmctld.log'}", f"SlurmdLogFile={state / 'slurmd.log'}",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} "
        "ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN",
        f"PartitionName=ci Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def job_state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job, check=False)
        fields = dict(w.split("=", 1) for w in out.split() if "=" in w)
        return fields.get("JobState", "UNKNOWN")

    def wait(self, job: str, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            state = self.job_state(job)
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
                return state
            time.sleep(1)
        return "WAIT-TIMEOUT"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.state.glob("*.log")))

    def stop(self) -> None:
        """Stop what was started here, newest first, by PID."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()


def _munge_works(env: dict[str, str]) -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, env=env, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       env=env, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _until(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def start(state: Path) -> Cluster:
    """Start munged (unless one answers already), slurmctld and slurmd; wait until the node is idle."""
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "spool"):
        (state / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    conf = state / "slurm.conf"
    conf.write_text(slurm_conf(state, node, os.cpu_count() or 1, _free_port(), _free_port()), encoding="utf-8")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(state, env)
    try:
        if not _munge_works(env):
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            cluster.procs.append(subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "-F"], env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if not _until(lambda: _munge_works(env), 20):
                raise RuntimeError("munged did not start (munge -n | unmunge fails)")
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", node]):
            log = open(state / f"{daemon[0]}.stdout", "w")
            cluster.procs.append(subprocess.Popen(daemon, env=env, stdout=log, stderr=subprocess.STDOUT))
        if not _until(lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T", check=False), 30):
            raise RuntimeError("the Slurm node never became idle:\n" + cluster.logs())
    except Exception:
        cluster.stop()
        raise
    return cluster
