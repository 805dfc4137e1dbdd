"""A real two-node SLURM cluster on this machine, for the tests of slurm/.

Debian's slurm-wlm (22.05, built with multiple-slurmd support) runs one slurmctld and two slurmd
daemons on one host, which act as nodes n1 and n2 (both 127.0.0.1, each slurmd on its own port).
Everything lives under one directory: munge key, socket and logs, slurm.conf, state, spool, logs
and PID files; clients find the cluster through SLURM_CONF (see `LocalCluster.env`). Nothing in
/etc or /run is read or written, so the machine's own SLURM/munge (if any) is left alone.

Settings that make it work here and fast (found by running it, see docs/DISTRIBUTED.md):
- everything as root (SlurmUser=root); munged with its own key (mode 0600) and socket (its
  directory world-executable), Slurm pointed at that socket with AuthInfo=socket=...
- no cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting;
- CommunicationParameters=NoCtldInAddrAny,NoInAddrAny so every daemon binds to 127.0.0.1;
- SchedulerParameters=sched_interval=1 and AuthInfo cred_expire=10: a requeued job restarts
  after ~11 s instead of ~2 minutes.

Every daemon runs in the foreground under tests/slurm/supervise.py, which takes down the
daemon's detached helpers (slurmstepd, job tasks) with it; `stop()` signals only those
supervisors, by PID.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUPERVISE = HERE / "supervise.py"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "srun", "scontrol", "squeue", "scancel")
NODES = ("n1", "n2")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


class ClusterError(RuntimeError):
    """The local cluster did not start or a job did not behave; the message carries the logs."""


def missing_requirements() -> str | None:
    """Why the local cluster cannot run here (a skip reason), or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs slurmd/slurmctld/munged as root (SlurmUser=root); not root"
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return (f"SLURM/munge not installed (missing: {', '.join(missing)}); "
                "install with `scripts/install.sh --system` (slurmctld slurmd slurm-client munge)")
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """One slurmctld + slurmd n1, n2 under `root`. Use as a context manager or start()/stop()."""

    def __init__(self, root: pathlib.Path | str, cpus_per_node: int | None = None):
        self.root = pathlib.Path(root)
        self.cpus = cpus_per_node or max(2, os.cpu_count() or 2)
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "run" / "munge.socket"
        self.log_dir = self.root / "log"
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ environment for clients

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what SLURM clients (and jobs started from them) need to find us."""
        # Nothing of an outer SLURM job (when the tests themselves run in one) or of the user's
        # sbatch/srun defaults: they would point our clients at another allocation or partition.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster; a failure raises with its output."""
        proc = subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        try:
            self._write_files()
            self._start_munged(timeout)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait(lambda: self.run("scontrol", "ping", check=False, timeout=10).returncode == 0,
                       timeout, "slurmctld to answer `scontrol ping`")
            for node in NODES:
                self._spawn(f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
            self._wait(self._nodes_idle, timeout, f"sinfo to show {', '.join(NODES)} idle")
        except BaseException as e:
            logs = self.daemon_logs()
            self.stop()
            if isinstance(e, ClusterError):
                raise ClusterError(f"{e}\n{logs}") from None
            raise

    def stop(self) -> None:
        """Cancel our jobs, then stop the supervisors we started (by PID), newest first."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.run("scancel", "--user=root", check=False, timeout=15)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.strip()
                if not out:
                    break
                time.sleep(0.5)
        for name, proc in reversed(list(self._procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    # ------------------------------------------------------------------ inspection

    def daemon_logs(self, tail: int = 60) -> str:
        """The last lines of every daemon log (for failure messages)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"----- {path.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts) or f"(no daemon logs under {self.log_dir})"

    def sinfo(self) -> str:
        return self.run("sinfo", "-N", "-h", "-o", "%N %T", check=False, timeout=10).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=10).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0])) if out.strip() else {}

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """Every record of a job (an array job has one per task)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=10).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def sbatch(self, *args: str, cwd: str | os.PathLike, env: dict | None = None) -> str:
        out = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env or self.env).stdout.strip()
        return out.split(";")[0]

    def wait_job(self, job_id: str, timeout: float, until=None, logs=()) -> dict[str, str]:
        """Poll until the job is finished (or `until(record)` is true for every record: an array
        job has one per task) and return its (first) record; a timeout raises with the logs."""
        until = until or (lambda info: info.get("JobState") in FINISHED)
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            records = self.jobs(job_id)
            if records and all(until(r) for r in records):
                return records[0]
            info = records[0] if records else {}
            time.sleep(1)
        raise ClusterError(
            f"job {job_id} not done within {timeout:.0f} s (state {info.get('JobState')}, "
            f"reason {info.get('Reason')}):\n{self.job_logs(logs)}\n{self.daemon_logs()}")

    @staticmethod
    def job_logs(paths) -> str:
        parts = []
        for path in paths:
            path = pathlib.Path(path)
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for f in files:
                if f.is_file():
                    text = f.read_text(errors="replace").splitlines()[-80:]
                    parts.append(f"----- {f}\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _write_files(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run", "munge/run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses group/other access to its key and needs to let clients reach the socket.
        os.chmod(self.root / "munge", 0o711)
        os.chmod(self.root / "munge" / "run", 0o711)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, *node_ports = (free_port() for _ in range(1 + len(NODES)))
        r = self.root
        nodes = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} State=UNKNOWN"
            for n, p in zip(NODES, node_ports))
        self.conf.write_text(f"""\
# Written by tests/slurm/slurm_cluster.py: a two-node test cluster on 127.0.0.1; see that file.
ClusterName=cointest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=10
MinJobAge=600
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    def _start_munged(self, timeout: float) -> None:
        m = self.root / "munge"
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}", f"--log-file={self.log_dir / 'munged.log'}",
        ])
        self._wait(self.munge_socket.exists, timeout, f"munged to create {self.munge_socket}")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = self.log_dir / f"{name}.stdout.log"
        self._procs[name] = subprocess.Popen(
            [sys.executable, str(SUPERVISE), str(log), "--", *cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
            start_new_session=True, env={**os.environ, "SLURM_CONF": str(self.conf)},
        )

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}")
            if ready():
                return
            time.sleep(0.3)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; sinfo: {self.sinfo()!r}")

    def _nodes_idle(self) -> bool:
        states = dict(line.split() for line in self.sinfo().splitlines() if len(line.split()) == 2)
        return all(states.get(n) == "idle" for n in NODES)


def job_env(cluster: LocalCluster, log_dir: os.PathLike | str) -> dict[str, str]:
    """What a test job gets: the cluster's SLURM_CONF, this interpreter, CPU DeepSpeed with one
    thread per rank, the shared JIT/model caches (already in os.environ from tests/conftest.py),
    a free rendezvous port, and the checkout on PYTHONPATH. sbatch exports it all to the job.
    Ranks per node: the templates' default (no GPUs: 1)."""
    env = cluster.env
    env.update(
        PYTHON=sys.executable, COIN_ROOT=str(REPO), LOG_DIR=str(log_dir),
        RDZV_PORT=str(free_port()), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


if __name__ == "__main__":  # manual use: python tests/slurm/slurm_cluster.py DIR  (Ctrl-C stops it)
    with LocalCluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/coin-slurm") as c:
        print(f"export SLURM_CONF={c.conf}\n{c.sinfo()}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
