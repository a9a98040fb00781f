"""Helpers for the agent's end-to-end tests: a collector, a gunicorn fleet, load.

Everything runs on loopback and ipc sockets in a private temporary directory,
and every process started here is stopped by its own pid.

Environment (set by tests/python/CMakeLists.txt):
  CANOPY_BIN      the collector binary (build/bin/canopy)
  PYTHONPATH      includes build/python (the canopy_agent package)
  CANOPY_EXAMPLE  examples/gunicorn-gevent
  CANOPY_FLEET_ROOT, CANOPY_FLEET_PYTHONPATH (optional, tests/py313/run-tests)
                  run gunicorn chrooted into this root file system (Debian 13's
                  Python) with this PYTHONPATH for canopy_agent; the collector
                  and the load stay on the host
"""

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

PYTHON = "/usr/bin/python3"  # Debian's, with gevent and gunicorn
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.environ.get("CANOPY_EXAMPLE", os.path.join(ROOT, "examples", "gunicorn-gevent"))
FLEET_ROOT = os.environ.get("CANOPY_FLEET_ROOT")


def canopy_bin():
    b = os.environ.get("CANOPY_BIN")
    if b and os.access(b, os.X_OK):
        return b
    for cand in ("build/bin/canopy", "build-py/bin/canopy"):
        p = os.path.join(ROOT, cand)
        if os.access(p, os.X_OK):
            return p
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Workdir:
    def __init__(self, prefix="canopy-py-"):
        # Short path: ipc socket paths are limited to ~100 bytes.
        self.path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")

    def join(self, *p):
        return os.path.join(self.path, *p)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


class FleetTestCase(unittest.TestCase):
    """A work directory, a collector and fleets, all stopped and removed after
    each test (the directory is kept when CANOPY_KEEP is set)."""
    workdir_prefix = "canopy-py-"

    def setUp(self):
        self.work = Workdir(self.workdir_prefix)
        self.fleets = []
        self.collector = None

    def tearDown(self):
        for f in self.fleets:
            f.stop()
        if self.collector:
            self.collector.stop()
        if os.environ.get("CANOPY_KEEP") is None:
            self.work.cleanup()
        else:
            print("kept", self.work.path, file=sys.stderr)

    def fleet(self, wait_agent=True, **kw):
        f = Fleet(self.work, **kw)
        self.fleets.append(f)
        return f.start(wait_agent=wait_agent)


COLLECTOR_CONFIG = """\
receivers:
  nng:
    listen: ["{url}"]
{receiver_tls}processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: {out}
    format: jsonl
service:
  telemetry:
    http:
      listen: 127.0.0.1:{admin_port}
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [file]
tasks:
  static:
{tasks}
"""

TASK = """\
    - id: {id}
      service: {service}
      endpoint: {endpoint}
      duration: {duration}
      min_duration_threshold: {min_duration}
      dump_period: {dump_period}
      max_sampling_count: {max_sampling_count}
{extra}"""


RECEIVER_TLS = """\
    tls:
      cert_file: {cert_file}
      key_file: {key_file}
      ca_file: {ca_file}
      client_auth: {client_auth}
"""


class Collector:
    """build/bin/canopy run -c <generated config>.

    By default the receiver listens on an ipc socket in the work directory.
    url= listens there instead (e.g. tls+tcp://127.0.0.1:<port>); tls= is the
    receiver's tls block, {cert_file, key_file, ca_file, client_auth}."""

    def __init__(self, work, tasks, service="shop", url=None, tls=None):
        self.work = work
        self.url = url or "ipc://" + work.join("collector.sock")
        self.admin = "127.0.0.1:%d" % free_port()
        self.out = work.join("out")
        os.makedirs(self.out, exist_ok=True)
        task_text = "".join(
            TASK.format(service=service, **dict(dict(duration="10m", min_duration="0ms", dump_period="10ms",
                                                     max_sampling_count=9, extra=""), **t))
            for t in tasks)
        self.config = work.join("canopy.yaml")
        with open(self.config, "w") as f:
            f.write(COLLECTOR_CONFIG.format(
                url=self.url, out=self.out, admin_port=self.admin.rsplit(":", 1)[1], tasks=task_text,
                receiver_tls=RECEIVER_TLS.format(**dict(dict(client_auth="none"), **tls)) if tls else ""))
        self.proc = None
        self.log = work.join("collector.log")

    def start(self):
        binary = canopy_bin()
        if not binary:
            raise RuntimeError("collector binary not found (set CANOPY_BIN)")
        logf = open(self.log, "ab")
        offset = logf.tell()  # a restart appends: look for its own line
        self.proc = subprocess.Popen([binary, "run", "-c", self.config], stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        if self.url.startswith("ipc://"):
            sock = self.url[len("ipc://"):]
            wait_until(lambda: os.path.exists(sock) or self.proc.poll() is not None, 10, what="collector socket")
        else:
            # Not by connecting: a probe of a TLS port would be counted as a failed handshake.
            wait_until(lambda: "listening on " + self.url in self.read_log(offset) or self.proc.poll() is not None,
                       10, what="collector listener")
        if self.proc.poll() is not None:
            raise RuntimeError("collector exited: " + self.read_log())
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def read_log(self, offset=None):
        """The last 4000 characters of the log, or all of it from byte offset."""
        try:
            with open(self.log, "rb") as f:
                if offset is not None:
                    f.seek(offset)
                text = f.read().decode(errors="replace")
                return text if offset is not None else text[-4000:]
        except OSError:
            return ""

    def rows(self, task_id):
        path = os.path.join(self.out, task_id + ".jsonl")
        rows = []
        if not os.path.exists(path):
            return rows
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
        return rows


class Fleet:
    """gunicorn -k gevent -w N -c python:canopy_agent.gunicorn_conf app:app, on a free port.

    launcher replaces "python3 -m gunicorn" (e.g. [canopy-run, gunicorn]);
    conf=False leaves out the -c option (canopy-run installs the hooks)."""

    def __init__(self, work, workers=4, env=None, args=(), agent=True, name="fleet", launcher=None, conf=True,
                 worker_class="gevent"):
        self.work = work
        self.worker_class = worker_class
        self.launcher = list(launcher or [PYTHON, "-m", "gunicorn"])
        self.conf = conf
        self.port = free_port()
        self.pidfile = work.join(name + ".pid")
        self.log = work.join(name + ".log")
        self.workers = workers
        self.env = dict(os.environ)
        self.env.update({
            "PYTHONPATH": os.pathsep.join(p for p in (EXAMPLE, os.environ.get("PYTHONPATH", "")) if p),
            "CANOPY_SERVICE": "shop",
            "CANOPY_COMMAND_POLL_MS": "300",
            "CANOPY_MAX_BATCH_AGE_MS": "100",
        })
        if FLEET_ROOT:
            self.env["PYTHONPATH"] = os.pathsep.join((EXAMPLE, os.environ["CANOPY_FLEET_PYTHONPATH"]))
        self.env.pop("CANOPY_INSTANCE", None)
        if env:
            self.env.update(env)
        self.args = list(args)
        self.agent = agent
        self.proc = None

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=20, wait_agent=True):
        """Starts gunicorn and waits until it serves and (with wait_agent) every
        worker logged that its agent started."""
        cmd = (["chroot", FLEET_ROOT] if FLEET_ROOT else []) + self.launcher + [
            "-k", self.worker_class, "-w", str(self.workers), "-b", "127.0.0.1:%d" % self.port, "-p", self.pidfile,
            "--graceful-timeout", "5"]
        if self.agent and self.conf:
            cmd += ["-c", "python:canopy_agent.gunicorn_conf"]
        cmd += self.args + ["app:app"]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=EXAMPLE, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.read_log())
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, timeout, interval=0.1, what="gunicorn to serve")
        if self.agent and wait_agent:
            # Every worker logs once its agent is up; wait for all of them.
            wait_until(lambda: self.read_log().count("canopy agent started") >= self.workers, timeout,
                       what="canopy agent in every worker")
        return self

    def stop(self, timeout=15):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def worker_stats(self, tries=60):
        """canopy_agent.stats() of the workers that answer, keyed by pid."""
        seen = {}
        for _ in range(tries):
            try:
                with urllib.request.urlopen(self.base + "/_canopy/stats", timeout=5) as r:
                    d = json.loads(r.read())
                seen[d.get("pid")] = d
            except OSError:
                pass
            if len(seen) >= self.workers:
                break
        return seen


def load(url, requests, concurrency, timeout=60):
    """Runs examples/gunicorn-gevent/load.py; returns its summary as a dict."""
    out = subprocess.run([PYTHON, os.path.join(EXAMPLE, "load.py"), "--url", url, "-n", str(requests), "-c",
                          str(concurrency)], capture_output=True, text=True, timeout=timeout)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    fields = dict(kv.split("=", 1) for kv in last.split() if "=" in kv)
    if not fields:
        raise AssertionError("load.py printed nothing: %s" % out.stderr)
    return {k: float(v) if "." in v else int(v) for k, v in fields.items()} | {"stderr": out.stderr}


def check_segments(test, rows):
    """Every segment's sequences are dense from 0 (duplicates of one
    (segment, sequence) are allowed: delivery is at least once)."""
    by_seg = collections.defaultdict(set)
    for r in rows:
        by_seg[r["traceSegmentId"]].add(r["sequence"])
    for seg, seqs in by_seg.items():
        test.assertEqual(sorted(seqs), list(range(len(seqs))), "segment %s: sequences not dense from 0" % seg)
    return by_seg


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    print(canopy_bin(), EXAMPLE, file=sys.stderr)
