"""A throw-away single-node SLURM cluster on localhost, for the workflow's cluster test.

:class:`SlurmCluster` writes a munge key and a ``slurm.conf`` into a private folder, starts ``munged``,
``slurmctld`` and ``slurmd`` in the foreground as child processes (so it knows their PIDs), waits until
the node is idle, and stops exactly those processes again in :meth:`stop`.

Two facts shape the configuration:
- the Snakemake SLURM executor's job step drops ``SLURM_CONF``, so ``srun`` inside a job reads
  ``/etc/slurm/slurm.conf``: the cluster installs its file there and restores what was there before;
- in a container there are no cgroups to track processes, so ``ProctrackType=proctrack/linuxproc`` and
  ``TaskPlugin=task/none``; there is no accounting database, so jobs are queried with ``squeue`` and
  ``MinJobAge`` is long enough for finished jobs to stay visible.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd")


def slurm_available() -> bool:
    """True when every daemon and client this cluster needs is installed."""
    return all(shutil.which(tool) for tool in (*DAEMONS, "sbatch", "squeue", "srun", "scontrol"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_line() -> str:
    """``NodeName=... CPUs=... RealMemory=...`` as slurmd itself reports this machine."""
    out = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


class SlurmCluster:
    """One controller and one compute node on this machine, with state under ``root``.

    ``cpus`` overrides the node's CPU count (``SlurmdParameters=config_overrides``) so jobs that ask
    for more threads than the machine has still get placed.
    """

    def __init__(self, root: Path, cpus: int = 8) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.procs: dict[str, subprocess.Popen] = {}
        self._saved_conf: bytes | None = None
        self._installed_conf = False
        self.env = dict(os.environ, SLURM_CONF=str(SYSTEM_CONF))

    # -- files ---------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        self.munge_socket = r / "munge" / "munge.socket"
        node = _node_line().split()
        self.node_name = node[0].split("=", 1)[1]
        node = [f"CPUs={self.cpus}" if item.startswith("CPUs=") else item for item in node]
        node = [item for item in node if item.split("=")[0] in ("NodeName", "CPUs", "RealMemory")]
        self.conf_text = "\n".join(
            [
                "ClusterName=ndtest",
                f"SlurmctldHost={self.node_name}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self.munge_socket}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SlurmdParameters=config_overrides",
                "MpiDefault=none",
                "ReturnToService=2",
                "MinJobAge=86400",
                "SchedulerType=sched/builtin",
                "InactiveLimit=0",
                "KillWait=5",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                " ".join(node) + " State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
        (r / "slurm.conf").write_text(self.conf_text)
        if SYSTEM_CONF.exists():
            self._saved_conf = SYSTEM_CONF.read_bytes()
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(self.conf_text)
        self._installed_conf = True

    # -- daemons -------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the files, start the three daemons and wait until the node accepts jobs."""
        self._write_files()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(SYSTEM_CONF)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(SYSTEM_CONF)])
        self._wait(self._node_idle, timeout, "the SLURM node did not become idle")
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env
        ).stdout.strip()
        return out.startswith("idle") or out.startswith("mix")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.exists():
                parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def controller_log(self) -> str:
        path = self.root / "log" / "slurmctld.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the daemons this object started (by PID), then restore /etc/slurm/slurm.conf."""
        try:
            for name in reversed(DAEMONS):
                proc = self.procs.get(name)
                if proc is None or proc.poll() is not None:
                    continue
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        finally:
            if self._installed_conf:
                if self._saved_conf is not None:
                    SYSTEM_CONF.write_bytes(self._saved_conf)
                else:
                    SYSTEM_CONF.unlink(missing_ok=True)
                self._installed_conf = False
