"""Helpers for the spool chaos tests (tests/chaos/spool_*.py): a loadgen that
runs in the background and reports its progress, a collector that can be
killed and restarted on the same config, jsonl and spool inspection, and a
tmpfs mount. Builds on tests/oap/oaplib.py (stand-in OAP, checks, workdirs).
Only the standard library; /usr/bin/python3."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "oap"))
import oaplib  # noqa: E402,F401  (re-exported for the tests)
from oaplib import TestFailure, check, free_port, log, wait_for  # noqa: E402,F401

PROGRESS = re.compile(r"acked=(\d+)/(\d+) resent=(\d+) errors=(\d+) agents done=(\d+)")


class Loadgen:
    """canopy-loadgen in the background. Its stderr progress (once a second)
    is parsed into .acked/.resent; .result() waits for its summary line."""

    def __init__(self, build_dir, url, agents, batches, batch_size=256, depth=20, tasks=4, timeout=80,
                 attempt_timeout=2000, window=4, seed=1, service="loadgen"):
        self.total_batches = agents * batches
        self.snapshots = agents * batches * batch_size
        cmd = [os.path.join(build_dir, "bin", "canopy-loadgen"), "--url", url, "--agents", str(agents),
               "--batches", str(batches), "--batch-size", str(batch_size), "--depth", str(depth),
               "--tasks", str(tasks), "--timeout", str(timeout), "--attempt-timeout", str(attempt_timeout),
               "--window", str(window), "--seed", str(seed), "--service", service]
        self.acked = self.resent = self.errors = 0
        self.started = False
        self.lines = []
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out = []
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out = threading.Thread(target=lambda: self._out.extend(self.proc.stdout), daemon=True)
        self._t_err.start()
        self._t_out.start()

    def _read_err(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "started" in line:
                self.started = True
                self.t0 = time.time()
            m = PROGRESS.search(line)
            if m:
                self.acked, _, self.resent, self.errors = (int(x) for x in m.groups()[:4])

    def running(self):
        return self.proc.poll() is None

    def result(self, timeout):
        """Waits for the loadgen; returns its summary as a dict of numbers."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure("canopy-loadgen did not finish within %d s (acked %d/%d)"
                              % (timeout, self.acked, self.total_batches))
        self._t_out.join(5)
        self._t_err.join(5)
        self.seconds = time.time() - self.t0
        lines = [l for l in self._out if l.strip()]
        check(lines, "canopy-loadgen printed nothing; stderr:\n%s" % "\n".join(self.lines[-20:]))
        out = {}
        for part in lines[-1].split():
            k, _, v = part.partition("=")
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
        out["rc"] = self.proc.returncode
        out["resent_seen"] = self.resent
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Collector(oaplib.Collector):
    """oaplib's collector, plus kill -9 and a fresh log per run (so that
    'ready' is looked for in this run's log only)."""

    runs = 0

    def __init__(self, build_dir, workdir, config_text, name="canopy"):
        super().__init__(build_dir, workdir, config_text, name=name)
        self.base = name
        self.logs = []

    def start(self, admin_port, timeout=30):
        Collector.runs += 1
        self.log_path = os.path.join(self.workdir, "%s.%d.log" % (self.base, len(self.logs) + 1))
        self.logs.append(self.log_path)
        return super().start(admin_port, timeout)

    def kill9(self):
        check(self.proc and self.proc.poll() is None, "canopy is not running")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None

    def all_logs(self):
        text = []
        for p in self.logs:
            try:
                with open(p, errors="replace") as f:
                    text.append(f.read())
            except OSError:
                pass
        return "\n".join(text)


def config(listen_url, admin_port, exporters, flush_interval="200ms", shutdown_timeout="60s", memory_limit=None,
           log_level="info", extra_service="", merge_extra=""):
    """A collector config: nng receiver -> merge_by_task -> the exporters
    ({id: yaml body indented by 4}); admin API on admin_port."""
    ex = "\n".join("  %s:\n%s" % (k, v) for k, v in exporters.items())
    svc = "  shutdown_timeout: %s\n" % shutdown_timeout
    if memory_limit:
        svc += "  memory_limit: %s\n" % memory_limit
    return """receivers:
  nng:
    listen: ["%s"]
processors:
  merge_by_task:
    flush_interval: %s
%sexporters:
%s
service:
%s%s  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [%s]
  telemetry:
    logs:
      level: %s
    http:
      listen: "127.0.0.1:%d"
""" % (listen_url, flush_interval, merge_extra, ex, svc, extra_service, ", ".join(exporters), log_level, admin_port)


def spool_yaml(directory, fsync="interval", when_full="block", max_size=None, segment_size=None,
               fsync_interval=None):
    lines = ["    spool:", '      directory: "%s"' % directory, "      fsync: %s" % fsync,
             "      when_full: %s" % when_full]
    if max_size:
        lines.append("      max_size: %s" % max_size)
    if segment_size:
        lines.append("      segment_size: %s" % segment_size)
    if fsync_interval:
        lines.append("      fsync_interval: %s" % fsync_interval)
    return "\n".join(lines)


def file_yaml(directory, fsync="interval"):
    return '    directory: "%s"\n    format: jsonl\n    fsync: %s' % (directory, fsync)


# ---- jsonl ------------------------------------------------------------------------

def count_lines(directory):
    """Newlines in every .jsonl file: cheap enough to poll while data flows."""
    n = 0
    if not os.path.isdir(directory):
        return 0
    for name in os.listdir(directory):
        if name.endswith(".jsonl"):
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    while True:
                        buf = f.read(1 << 20)
                        if not buf:
                            break
                        n += buf.count(b"\n")
            except OSError:
                pass
    return n


def wait_lines(directory, expected, timeout, stall):
    """Polls until the files have `expected` lines, or no new line came for
    `stall` seconds, or timeout. Returns (lines, time the last line came)."""
    deadline = time.time() + timeout
    last_n, last_change = -1, time.time()
    while True:
        n = count_lines(directory)
        now = time.time()
        if n != last_n:
            last_n, last_change = n, now
        if n >= expected or now - last_change > stall or now > deadline:
            return n, last_change
        time.sleep(0.1)


def audit_jsonl(directory):
    """Reads every line back. Returns {"lines", "unique", "dup", "bad", "keys",
    "not_dense"}: dup counts lines whose (task, segment, sequence) was already
    seen; not_dense lists segments whose sequences have gaps or do not start at 0."""
    import json
    seen = set()
    segs = {}
    by_service = {}
    lines = dup = bad = 0
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            for raw in f:
                lines += 1
                try:
                    o = json.loads(raw)
                    key = (o["taskId"], o["traceSegmentId"], o["sequence"])
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                if key in seen:
                    dup += 1
                    continue
                seen.add(key)
                segs.setdefault(key[:2], []).append(key[2])
                by_service[o.get("service")] = by_service.get(o.get("service"), 0) + 1
    not_dense = [s for s, q in segs.items() if sorted(q) != list(range(len(q)))]
    return {"lines": lines, "unique": len(seen), "dup": dup, "bad": bad, "keys": seen, "segments": len(segs),
            "not_dense": not_dense, "by_service": by_service}


# ---- spool directory --------------------------------------------------------------

def spool_files(directory):
    try:
        return sorted(n for n in os.listdir(directory) if n.startswith("seg-") and n.endswith(".log"))
    except OSError:
        return []


def spool_bytes(directory):
    total = 0
    for n in spool_files(directory):
        try:
            total += os.path.getsize(os.path.join(directory, n))
        except OSError:
            pass
    return total


def segment_firsts(directory):
    """First record sequence of every segment file, from the names."""
    return [int(n[4:-4]) for n in spool_files(directory)]


def spool_cursor(directory):
    """The committed cursor (first record not fully exported), or None."""
    import struct
    try:
        with open(os.path.join(directory, "cursor"), "rb") as f:
            data = f.read(16)
        return struct.unpack("<QQ", data)[0] if len(data) == 16 else None
    except OSError:
        return None


# ---- tmpfs ------------------------------------------------------------------------

class Tmpfs:
    """mount -t tmpfs -o size=SIZE tmpfs DIR for the duration of a with block."""

    def __init__(self, path, size="16m"):
        self.path = path
        self.size = size
        self.mounted = False

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % self.size, "tmpfs", self.path],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            print("SKIP: cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): %s" % r.stderr.strip(), flush=True)
            sys.exit(77)
        self.mounted = True
        return self

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, name="filler", leave=0):
        """Fills the file system with a file (dd) until writes fail with ENOSPC,
        then gives back `leave` bytes. Returns the filler's size."""
        path = os.path.join(self.path, name)
        subprocess.run(["dd", "if=/dev/zero", "of=%s" % path, "bs=64k"], capture_output=True, timeout=60)
        if leave:
            size = os.path.getsize(path)
            os.truncate(path, max(0, size - leave))
        return os.path.getsize(path)

    def __exit__(self, et, ev, tb):
        if self.mounted:
            for attempt in range(20):
                r = subprocess.run(["umount", self.path], capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    break
                time.sleep(0.25)
            else:
                subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=30)
            self.mounted = False
        return False


def grep(text, pattern):
    return re.findall(pattern, text)


def log_times(text, needle):
    """Epoch seconds of the collector's log lines that contain needle."""
    import calendar
    out = []
    for line in text.splitlines():
        if needle in line:
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z", line)
            if m:
                out.append(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1000)
    return out


def report_line(**kw):
    """One `key=value ...` line, for logs and docs/reliability.md."""
    return " ".join("%s=%s" % (k, ("%.1f" % v) if isinstance(v, float) else v) for k, v in kw.items())
