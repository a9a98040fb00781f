"""Helpers for the admin API tests: a collector on a generated config, HTTP
calls, canopy-loadgen, and a strict Prometheus text-format parser.

Every process started here is stopped by its own pid.
"""
import http.client as httpclient
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        import json
        return json.loads(self.body)


def http(method, url, body=None, headers=None, timeout=30):
    u = urllib.parse.urlsplit(url)
    conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=timeout)
    path = u.path + ("?" + u.query if u.query else "")
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        import json
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)


class Collector:
    """`canopy run -c <config>` in a private directory; the config may use @DIR@ and @ADMIN@."""

    def __init__(self, bin_dir, config_text, env=None):
        self.bin_dir = bin_dir
        self.dir = tempfile.mkdtemp(prefix="canopy-admin-", dir="/tmp")
        self.port = free_port()
        self.admin = "http://127.0.0.1:%d" % self.port
        self.config = os.path.join(self.dir, "canopy.yaml")
        with open(self.config, "w") as f:
            f.write(config_text.replace("@DIR@", self.dir).replace("@ADMIN@", "127.0.0.1:%d" % self.port))
        self.log_path = os.path.join(self.dir, "canopy.log")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def start(self, timeout=15):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(self.bin_dir, "canopy"), "run", "-c", self.config], stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.dir)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("canopy exited early:\n" + self.read_log())
            with open(self.log_path, "rb") as f:
                return b"] ready" in f.read()

        wait_until(ready, timeout, what="canopy ready")
        return self

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("canopy did not stop within %ss" % timeout)
        return self.proc.returncode

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def cleanup(self):
        if os.environ.get("CANOPY_KEEP"):
            print("kept", self.dir)
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args, timeout=30):
        """Runs `canopy task ...` against this collector's admin API."""
        cmd = [os.path.join(self.bin_dir, "canopy"), "task", *args]
        if "--help" not in args and "-h" not in args:
            cmd += ["--admin", self.admin]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def get(self, path, **kw):
        return http("GET", self.admin + path, **kw)

    def task(self, task_id):
        return self.get("/api/v1/tasks/" + urllib.parse.quote(task_id, safe="")).json()


def loadgen(bin_dir, url, agents, batches, batch_size, depth, tasks, timeout=120):
    """canopy-loadgen; returns its last line as a dict of numbers."""
    cmd = [os.path.join(bin_dir, "canopy-loadgen"), "--url", url, "--agents", str(agents), "--batches", str(batches),
           "--batch-size", str(batch_size), "--depth", str(depth), "--tasks", str(tasks), "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0:
        raise RuntimeError("loadgen failed (%d): %s\n%s" % (out.returncode, last, out.stderr))
    return {k: float(v) for k, v in (kv.split("=") for kv in last.split())}


# ---- Prometheus text format 0.0.4, strictly ---------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class PromError(AssertionError):
    pass


def _unescape(s, allowed, what, lineno):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in allowed:
                raise PromError("line %d: bad escape in %s: %r" % (lineno, what, s))
            out.append({"\\": "\\", "n": "\n", '"': '"'}[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _parse_value(text, lineno):
    if text in ("NaN", "+Inf", "-Inf", "Inf"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise PromError("line %d: bad sample value %r" % (lineno, text))
    return float(text)


def _family_of(sample, types):
    """The family a sample belongs to (histogram and summary suffixes folded in)."""
    if sample in types:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and types.get(sample[: -len(suffix)]) in ("histogram", "summary"):
            return sample[: -len(suffix)]
    return sample


def parse_prometheus(text):
    """Parses exposition text, enforcing the format's rules; returns
    ({(name, frozenset(labels)): value}, {family: type}, {family: help})."""
    if text and not text.endswith("\n"):
        raise PromError("the last line must end with a newline")
    samples, types, helps = {}, {}, {}
    seen_families, current = set(), None
    for lineno, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if line == "":
            continue
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (%s) ?(.*)" % _NAME, line)
            if not m:
                if line.startswith("# HELP") or line.startswith("# TYPE"):
                    raise PromError("line %d: malformed %r" % (lineno, line))
                continue  # a plain comment
            kind, name, rest = m.groups()
            if name in seen_families and name != current:
                raise PromError("line %d: %s %s after its family's samples ended" % (lineno, kind, name))
            if kind == "HELP":
                if name in helps:
                    raise PromError("line %d: second HELP for %s" % (lineno, name))
                helps[name] = _unescape(rest, "\\n", "HELP", lineno)
            else:
                if name in types:
                    raise PromError("line %d: second TYPE for %s" % (lineno, name))
                if rest not in _TYPES:
                    raise PromError("line %d: unknown type %r" % (lineno, rest))
                if name in seen_families:
                    raise PromError("line %d: TYPE for %s after its samples" % (lineno, name))
                types[name] = rest
            if current != name:
                if current is not None:
                    seen_families.add(current)
                current = name
            continue
        m = re.fullmatch(r"(%s)(\{(.*)\})? (\S+)( -?\d+)?" % _NAME, line)
        if not m:
            raise PromError("line %d: malformed sample %r" % (lineno, line))
        name, _, label_text, value_text, _ts = m.groups()
        labels = {}
        if label_text:
            pos = 0
            lm_re = re.compile(r'(%s)="((?:[^"\\]|\\.)*)"(,|$)' % _LABEL)
            while pos < len(label_text):
                lm = lm_re.match(label_text, pos)
                if not lm:
                    raise PromError("line %d: malformed labels %r" % (lineno, label_text))
                lname, lval, _sep = lm.groups()
                if lname in labels:
                    raise PromError("line %d: label %s twice" % (lineno, lname))
                labels[lname] = _unescape(lval, '\\n"', "label value", lineno)
                pos = lm.end()
        family = _family_of(name, types)
        if family in seen_families and family != current:
            raise PromError("line %d: samples of %s are not contiguous" % (lineno, family))
        if current != family:
            if current is not None:
                seen_families.add(current)
            current = family
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise PromError("line %d: duplicate series %s%s" % (lineno, name, labels))
        value = _parse_value(value_text, lineno)
        if types.get(family) == "counter" and (value < 0 or math.isnan(value)):
            raise PromError("line %d: counter %s is %r" % (lineno, name, value))
        samples[key] = value
    return samples, types, helps


def metric(samples, name, **labels):
    """The value of one series, or None."""
    return samples.get((name, frozenset(labels.items())))
