"""A real single-node Slurm cluster for tests: slurmctld + slurmd on loopback,
auth/none (no munge), state and spool under a temp directory.

Daemons run in the foreground (-D) as our children, so they are stopped by the
pids we started. Clients find the cluster through SLURM_CONF.
"""
import os
import shutil
import socket
import subprocess
import time

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo")


def missing_binaries():
  return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def write_conf(root, cpus):
  host = socket.gethostname().split(".")[0]
  conf = f"""\
ClusterName=chinchax-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
  for sub in ("state", "spool"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  path = os.path.join(root, "slurm.conf")
  with open(path, "w") as f:
    f.write(conf)
  return path


class Cluster:
  """Starts the daemons in __init__; `env` points clients at them; stop() ends them."""

  def __init__(self, root, cpus=2, timeout=30):
    self.root = root
    self.conf = write_conf(root, cpus)
    self.env = dict(os.environ, SLURM_CONF=self.conf)
    self.procs = []
    try:
      for daemon in DAEMONS:
        log = open(os.path.join(root, f"{daemon}.out"), "w")
        self.procs.append(subprocess.Popen([daemon, "-D", "-f", self.conf], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT))
      self._wait_idle(timeout)
    except BaseException:
      self.stop()
      raise

  def _wait_idle(self, timeout):
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
      for p in self.procs:
        if p.poll() is not None:
          raise RuntimeError(f"{p.args[0]} exited ({p.returncode}): {self.logs()}")
      out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                           text=True)
      state = out.stdout.strip()
      if out.returncode == 0 and state.startswith("idle"):
        return
      time.sleep(0.5)
    raise RuntimeError(f"slurm node not idle after {timeout}s (state {state!r}): {self.logs()}")

  def logs(self):
    text = []
    for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
      path = os.path.join(self.root, name)
      if os.path.exists(path):
        with open(path) as f:
          text.append(f"--- {name}\n{f.read()[-3000:]}")
    return "\n".join(text)

  def stop(self):
    for p in reversed(self.procs):
      if p.poll() is None:
        p.terminate()
    for p in self.procs:
      try:
        p.wait(timeout=15)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    self.procs = []
