"""A throw-away single-node Slurm for tests: munged, slurmctld and slurmd from Debian's slurm-wlm, all state, sockets
and logs in one temporary folder, free ports, no accounting (so ``sacct`` fails, as on a cluster without slurmdbd).

Needs root and the binaries (``apt-get install slurm-wlm munge``); ``why_not()`` says why it cannot start here.
Clients find it through ``SLURM_CONF`` (``env``). Every daemon is a child in the foreground, killed by ``stop()``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from local_server import free_port

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def why_not() -> str | None:
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"no single-node Slurm here: {', '.join(missing)} missing (apt-get install slurm-wlm munge, as root)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    return None


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 2, memory_mb: int = 4000, kill_wait_s: int = 30) -> None:
        self.root = root
        root.chmod(0o700)
        self.procs: list[subprocess.Popen] = []
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = root / "munge.sock"
        self._start([_which("munged"), "-F", "-f", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
                     f"--seed-file={root / 'munged.seed'}"])
        self._until(lambda: self.munge_socket.exists(), 20, "munged")
        host = socket.gethostname().split(".")[0]
        for d in ("state", "spool"):
            (root / d).mkdir()
        self.conf = root / "slurm.conf"
        self.conf.write_text(f"""ClusterName=plasticitytest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait={kill_wait_s}
MinJobAge=60
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {"SLURM_CONF": str(self.conf)}
        self._start([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start([_which("slurmd"), "-D", "-f", str(self.conf)])
        self._until(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, 60, "the node to be idle")

    def _start(self, cmd: list) -> None:
        log = open(self.root / f"{Path(cmd[0]).name}.out", "ab")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}))

    def _until(self, predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > end:
                logs = "".join(f.read_text(errors="replace")[-1500:] for f in self.root.glob("*.log"))
                self.stop()
                raise RuntimeError(f"single-node Slurm: {what} did not come ({'died: ' + str(dead) if dead else 'timeout'}); {logs}")
            time.sleep(0.3)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **self.env})

    def stop(self) -> None:
        if self.procs:
            self.run("scancel", "--full", "--user=root")  # the tasks end before their daemons do
            time.sleep(1)
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.procs.clear()
