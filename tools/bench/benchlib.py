"""What the benchmarks share: ports, /proc readings, CPU pinning, and a
collector that only discards (nng -> merge_by_task -> discard), which the
agent benchmarks need so that their library really ships batches."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """user + system CPU time of a process so far (all its threads); 0 once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def peak_rss_kib(pid):
    """The process's peak resident set (VmHWM) in KiB; 0 once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pinned(cpu, cmd):
    """cmd run on one CPU (taskset), so a client and a server do not trade cores."""
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:
        return ["taskset", "-c", str(cpu)] + cmd
    return cmd


DISCARD_CONFIG = """receivers:
  nng:
    listen: ["%(url)s"]
processors:
  merge_by_task: {}
exporters:
  discard: {}
service:
  telemetry:
    http:
      listen: 127.0.0.1:%(admin)d
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [discard]
%(extra)s"""


class DiscardCollector:
    """`canopy run` on DISCARD_CONFIG (plus `extra` top-level YAML) in its own
    temp dir under /tmp (bound into the Debian 13 root), listening on an ipc
    socket. cpu: pin it to that CPU (None: not pinned)."""

    def __init__(self, binary, extra="", cpu=None):
        self.dir = tempfile.mkdtemp(prefix="canopy-bench-", dir="/tmp")
        self.url = "ipc://" + os.path.join(self.dir, "c.sock")
        cfg = os.path.join(self.dir, "c.yaml")
        with open(cfg, "w") as f:
            f.write(DISCARD_CONFIG % dict(url=self.url, admin=free_port(), extra=extra))
        cmd = [binary, "run", "-c", cfg]
        self.proc = subprocess.Popen(pinned(cpu, cmd) if cpu is not None else cmd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock = self.url[len("ipc://"):]
        for _ in range(100):
            if os.path.exists(sock) or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(sock):
            self.stop()
            raise RuntimeError("the discard collector did not start (%s)" % " ".join(cmd))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
