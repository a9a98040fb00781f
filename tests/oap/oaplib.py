"""Helpers for canopy's SkyWalking tests and benchmark: start the stand-in
OAP, the collector and the load generator; talk to the stand-in's control
API; make a throw-away CA with openssl. Only the standard library."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"
STANDIN = os.path.join(HERE, "standin_oap.py")


class TestFailure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop_process(proc, timeout, ask=None):
    """Stops a child we started: ask(proc) (SIGTERM by default), then SIGKILL
    after timeout seconds."""
    if not proc or proc.poll() is not None:
        return
    try:
        if ask:
            ask(proc)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def close_file(f):
    """Closes f when there is one; returns None, for `self.f = close_file(self.f)`."""
    if f:
        f.close()
    return None


def wait_for(what, fn, timeout, interval=0.2):
    """Polls fn() until it returns a true value; returns it or raises."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
            last_ok = False
        else:
            last_ok = True
        if last_ok and last:
            return last
        time.sleep(interval)
    raise TestFailure("timed out after %.0f s waiting for %s (last: %r)" % (timeout, what, last))


def http_json(url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


# ---- stand-in OAP ---------------------------------------------------------------

class Standin:
    def __init__(self, workdir, token=None, tls_cert=None, tls_key=None, tls_client_ca=None,
                 state_file=None, grpc_port=None, control_port=None, name="oap"):
        self.workdir = workdir
        self.token = token
        self.tls = (tls_cert, tls_key, tls_client_ca)
        self.state_file = state_file
        self.grpc_port = grpc_port or free_port()
        self.control_port = control_port or free_port()
        self.name = name
        self.proc = None
        self.log_path = os.path.join(workdir, "%s.log" % name)

    @property
    def target(self):
        return "127.0.0.1:%d" % self.grpc_port

    @property
    def control(self):
        return "http://127.0.0.1:%d" % self.control_port

    def start(self, timeout=30):
        ready = os.path.join(self.workdir, "%s.ready" % self.name)
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [PY, STANDIN, "--grpc-port", str(self.grpc_port), "--control-port", str(self.control_port),
               "--ready-file", ready]
        if self.token:
            cmd += ["--token", self.token]
        cert, key, client_ca = self.tls
        if cert:
            cmd += ["--tls-cert", cert, "--tls-key", key]
        if client_ca:
            cmd += ["--tls-client-ca", client_ca]
        if self.state_file:
            cmd += ["--state-file", self.state_file]
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise TestFailure("stand-in OAP exited (%d); see %s:\n%s" % (
                    self.proc.returncode, self.log_path, open(self.log_path).read()[-2000:]))
            return os.path.exists(ready)
        wait_for("stand-in OAP to listen", up, timeout)
        return self

    def stop(self, timeout=15):
        stop_process(self.proc, timeout)
        self.proc = None
        self.logf = close_file(getattr(self, "logf", None))

    def get(self, path):
        return http_json(self.control + path)

    def post(self, path, body):
        return http_json(self.control + path, body)

    def stats(self):
        return self.get("/stats")

    def segments(self, task_id=None):
        return self.get("/segments" + ("?taskId=" + task_id if task_id else ""))

    def set_mode(self, mode, **kw):
        body = dict(kw, mode=mode)
        return self.post("/mode", body)

    def create_task(self, **kw):
        return self.post("/tasks", kw)

    def create_ending_task(self, ends_in_s, service="shop", endpoint="/checkout"):
        """A 1-minute task that started (60 - ends_in_s) s ago, so it ends soon:
        its finish reports come within the test."""
        now = int(time.time() * 1000)
        return self.create_task(service=service, endpointName=endpoint, duration=1, dumpPeriod=10,
                                minDurationThreshold=0, maxSamplingCount=9, startTime=now - (60 - ends_in_s) * 1000)

    def wait_notified(self, task_id, instances, timeout=20):
        """Waits until `instances` agent instances asked for the task; returns {instance: times}."""
        def notified():
            n = {t["taskId"]: t["notified"] for t in self.get("/tasks")}[task_id]
            return len(n) >= instances and n
        return wait_for("the task to reach all %d agent instances" % instances, notified, timeout)


# ---- collector ------------------------------------------------------------------

class Collector:
    """canopy run -c <config> with stderr to a log file."""

    def __init__(self, build_dir, workdir, config_text, name="canopy"):
        self.bin = os.path.join(build_dir, "bin", "canopy")
        self.workdir = workdir
        self.config = os.path.join(workdir, "%s.yaml" % name)
        self.log_path = os.path.join(workdir, "%s.log" % name)
        with open(self.config, "w") as f:
            f.write(config_text)
        self.proc = None

    def validate(self):
        r = subprocess.run([self.bin, "validate", "-c", self.config], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "canopy validate failed:\n%s%s" % (r.stdout, r.stderr))
        return r.stdout + r.stderr

    def start(self, admin_port, timeout=20):
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.bin, "run", "-c", self.config], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        self.admin = "http://127.0.0.1:%d" % admin_port

        def up():
            if self.proc.poll() is not None:
                raise TestFailure("canopy exited (%d) at start:\n%s" % (self.proc.returncode, self.log()[-3000:]))
            if "[canopy] ready" in self.log():
                return True
            with urllib.request.urlopen(self.admin + "/healthz", timeout=2) as r:
                return r.status == 200
        wait_for("canopy to be ready", up, timeout)
        return self

    def has_admin(self):
        try:
            with urllib.request.urlopen(self.admin + "/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def metric(self, name):
        """Sum of every series of the metric; None when the admin API is not
        there (the checks that need it are then skipped, and say so)."""
        try:
            m = self.metrics()
        except OSError:
            log("note: no admin API at %s; metric %s not checked" % (self.admin, name))
            return None
        return sum(v for k, v in m.items() if k.split("{")[0] == name)

    def metric_check(self, name, pred, msg):
        v = self.metric(name)
        if v is not None:
            check(pred(v), "%s (%s=%r)" % (msg, name, v))
        return v

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=30):
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise TestFailure("canopy did not stop within %d s of SIGTERM" % timeout)
        elif self.proc:
            rc = self.proc.returncode
        self.proc = None
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None
        # Under the ASan/UBSan build (make test runs the `sanitize` label there).
        text = self.log()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            check(marker not in text, "canopy: %s, see %s" % (marker, self.log_path))
        return rc


def loadgen(build_dir, url, agents, batches, batch_size, depth, tasks, timeout=300, extra=()):
    """Runs canopy-loadgen; returns the parsed last line as a dict of numbers."""
    bin_ = os.path.join(build_dir, "bin", "canopy-loadgen")
    cmd = [bin_, "--url", url, "--agents", str(agents), "--batches", str(batches), "--batch-size",
           str(batch_size), "--depth", str(depth), "--tasks", str(tasks)] + list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    check(r.returncode == 0, "canopy-loadgen failed (%d):\n%s%s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    lines = [l for l in r.stdout.strip().splitlines() if l.strip()]
    check(lines, "canopy-loadgen printed nothing")
    out = {}
    for part in lines[-1].split():
        k, _, v = part.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    check("snapshots" in out, "unexpected canopy-loadgen summary: %r" % lines[-1])
    return out


def require_binaries(build_dir, *names):
    """Skips (exit 77, ctest SKIP_RETURN_CODE) when a binary is not built yet."""
    missing = [n for n in names if not os.access(os.path.join(build_dir, "bin", n), os.X_OK)]
    if missing:
        print("SKIP: not built yet: %s" % ", ".join(missing), flush=True)
        sys.exit(77)


# ---- config snippets ------------------------------------------------------------

def sw_exporter_yaml(endpoints, token=None, tls=None, timeout="10s", extra=""):
    lines = ["    endpoints: [%s]" % ", ".join('"%s"' % e for e in endpoints), "    timeout: %s" % timeout]
    if token is not None:
        lines.append('    authentication: "%s"' % token)
    if tls is not None:
        lines.append("    tls:")
        for k, v in tls.items():
            lines.append('      %s: "%s"' % (k, v))
    if extra:
        lines.append(extra.rstrip("\n"))
    return "\n".join(lines)


# ---- TLS ------------------------------------------------------------------------

def make_ca(dirpath, with_client=False):
    """Self-signed CA, a server cert for 127.0.0.1/localhost, and optionally a
    client cert, all made with the openssl command line. Returns paths."""
    def run(*args):
        r = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, cwd=dirpath, timeout=60)
        check(r.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args), r.stderr))

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=canopy test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    with open(os.path.join(dirpath, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    out = {k: os.path.join(dirpath, v) for k, v in
           (("ca", "ca.pem"), ("server_cert", "server.pem"), ("server_key", "server.key"))}
    if with_client:
        with open(os.path.join(dirpath, "client.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=canopy", "-keyout", "client.key",
            "-out", "client.csr")
        run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "client.ext", "-out", "client.pem")
        out["client_cert"] = os.path.join(dirpath, "client.pem")
        out["client_key"] = os.path.join(dirpath, "client.key")
    return out


class Workdir:
    """A temp dir kept on failure (for the logs), removed on success."""

    def __init__(self, name):
        self.path = tempfile.mkdtemp(prefix="canopy-%s-" % name)

    def __enter__(self):
        return self.path

    def __exit__(self, et, ev, tb):
        if et is None and not os.environ.get("CANOPY_KEEP_TEST_DIRS"):
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            print("test files kept in %s" % self.path, flush=True)
        return False


def run_test(fn):
    """Entry point of a test script: runs fn(args), exit 0/1, logs failures."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)
    t0 = time.time()
    try:
        fn(args)
    except TestFailure as e:
        log("FAIL: %s" % e)
        sys.exit(1)
    log("PASS (%.1f s)" % (time.time() - t0))
    sys.exit(0)


# ---- canopy config ------------------------------------------------------------------

def canopy_config(listen_url, admin_port, exporters, flush_interval="200ms", tasks="", log_level="info",
                  max_snapshots=None, shutdown_timeout="10s"):
    """A whole collector config: nng receiver -> merge_by_task -> the given
    exporters ({id: yaml body indented by 4}), admin API on admin_port."""
    ex = "\n".join("  %s:\n%s" % (k, v) for k, v in exporters.items())
    merge = "    flush_interval: %s" % flush_interval
    if max_snapshots:
        merge += "\n    max_snapshots: %d" % max_snapshots
    text = """receivers:
  nng:
    listen: ["%s"]
processors:
  merge_by_task:
%s
exporters:
%s
service:
  shutdown_timeout: %s
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [%s]
  telemetry:
    logs:
      level: %s
    http:
      listen: "127.0.0.1:%d"
""" % (listen_url, merge, ex, shutdown_timeout, ", ".join(exporters.keys()), log_level, admin_port)
    if tasks:
        text += "tasks:\n" + tasks.rstrip("\n") + "\n"
    return text


def retry_yaml(initial="200ms", max_interval="2s", max_elapsed="5m", queue_size=10000):
    return """    sending_queue:
      queue_size: %d
    retry_on_failure:
      enabled: true
      initial_interval: %s
      max_interval: %s
      max_elapsed_time: %s""" % (queue_size, initial, max_interval, max_elapsed)


def file_exporter_yaml(directory):
    return '    directory: "%s"\n    format: jsonl' % directory


def read_jsonl_dir(directory):
    """Every snapshot the file exporter wrote: {(taskId, segment, sequence): obj}."""
    out = {}
    if not os.path.isdir(directory):
        return out
    for name in os.listdir(directory):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    o = json.loads(line)
                except ValueError:
                    continue  # a line being written
                out[(o["taskId"], o["traceSegmentId"], o["sequence"])] = o
    return out


def check_segments(oap, expected=None):
    """Every segment at the stand-in has sequence 0 and dense sequences."""
    seg = oap.segments()
    check(not seg["not_dense"], "segments with gaps at the OAP: %r" % seg["not_dense"][:5])
    for task, segs in seg["tasks"].items():
        for s, info in segs.items():
            check(info["has0"], "segment %s of %s has no sequence 0" % (s, task))
    if expected is not None:
        check(seg["snapshots"] == expected, "OAP stored %d snapshots, expected %d" % (seg["snapshots"], expected))
    return seg


class Env:
    """The usual cast of a test: a work dir, a stand-in, a collector."""

    def __init__(self, args, wd):
        self.args = args
        self.wd = wd
        self.build = args.build_dir
        self.url = "ipc://%s/canopy.sock" % wd
        self.admin_port = free_port()
        self.files = os.path.join(wd, "files")
        self.procs = []

    def collector(self, exporters, name="canopy", **kw):
        c = Collector(self.build, self.wd, canopy_config(self.url, self.admin_port, exporters, **kw), name=name)
        self.procs.append(c)
        return c

    def loadgen(self, agents=4, batches=20, batch_size=100, depth=16, tasks=3, **kw):
        return loadgen(self.build, self.url, agents, batches, batch_size, depth, tasks, **kw)

    def close(self):
        for p in self.procs:
            try:
                p.stop()
            except TestFailure as e:
                log("cleanup: %s" % e)


def wait_metric(collector, name, pred, what, timeout):
    """Waits until pred(metric) holds; returns at once when there is no admin API."""
    def ok():
        v = collector.metric(name)
        return True if v is None else pred(v)
    return wait_for(what, ok, timeout)


# ---- a gunicorn gevent fleet and steady load ------------------------------------------

# The fleet tests' app: /checkout spends time in hashing and in gevent sleeps, so
# profiled requests have stacks worth checking (their leaf functions: price, reserve_inventory).
CHECKOUT_APP = '''
import hashlib
import gevent


def price(n):
    h = b"x"
    for _ in range(n):
        h = hashlib.sha256(h).digest()
    return h


def reserve_inventory():
    gevent.sleep(0.03)


def checkout():
    reserve_inventory()
    price(20000)
    gevent.sleep(0.03)
    price(20000)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/checkout":
        checkout()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


class Fleet:
    """`gunicorn -k gevent -w N` with the canopy agent (build/python), serving
    CHECKOUT_APP from wd, its agents pointed at collector_url."""

    def __init__(self, build_dir, wd, collector_url, workers=4, service="shop", mode="auto"):
        self.mode = mode  # CANOPY_MODE of the workers
        self.pkg = os.path.join(build_dir, "python")
        self.wd = wd
        self.url = collector_url
        self.workers = workers
        self.service = service
        self.proc = None
        self.base = None

    def require_agent(self):
        if not os.path.isfile(os.path.join(self.pkg, "canopy_agent", "gunicorn_conf.py")):
            print("SKIP: the Python agent is not built (%s/canopy_agent)" % self.pkg)
            sys.exit(77)
        return self

    def start(self, timeout=30):
        with open(os.path.join(self.wd, "app.py"), "w") as f:
            f.write(CHECKOUT_APP)
        port = free_port()
        genv = dict(os.environ, PYTHONPATH=self.pkg + os.pathsep + self.wd, CANOPY_COLLECTOR=self.url,
                    CANOPY_SERVICE=self.service, CANOPY_COMMAND_POLL_MS="300", CANOPY_MODE=self.mode)
        self.log_path = os.path.join(self.wd, "gunicorn.log")
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "gunicorn", "-k", "gevent", "-w", str(self.workers), "-b", "127.0.0.1:%d" % port,
             "-c", "python:canopy_agent.gunicorn_conf", "app:app"],
            cwd=self.wd, env=genv, stdout=self.logf, stderr=subprocess.STDOUT)
        self.base = "http://127.0.0.1:%d" % port

        def up():
            if self.proc.poll() is not None:
                raise TestFailure("gunicorn exited:\n" + open(self.log_path).read()[-3000:])
            with urllib.request.urlopen(self.base + "/", timeout=2) as r:
                return r.status == 200
        wait_for("gunicorn to serve", up, timeout)
        return self

    def drive(self, path="/checkout", seconds=6, clients=12):
        """`clients` threads requesting path for `seconds`; returns how many were served."""
        stop = threading.Event()
        done = [0]

        def client():
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(self.base + path, timeout=10) as r:
                        r.read()
                    done[0] += 1
                except OSError:
                    time.sleep(0.1)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(15)
        return done[0]

    def stop(self):
        stop_process(self.proc, 20)
        self.proc = None
        self.logf = close_file(getattr(self, "logf", None))


class SteadyLoad:
    """A small canopy-loadgen run about every 0.5 s, each from new agents, until
    stop(); .total() is what was sent, and stop() raises what went wrong."""

    def __init__(self, env, agents=2, batches=10, batch_size=50, depth=12, tasks=3):
        self.totals, self.errors = [], []
        self._stop = threading.Event()
        self._kw = dict(agents=agents, batches=batches, batch_size=batch_size, depth=depth, tasks=tasks)
        self._env = env
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                r = self._env.loadgen(**self._kw)
                if r["sent"] != r["acked"]:
                    self.errors.append("loadgen not fully acked: %r" % r)
                self.totals.append(int(r["snapshots"]))
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.errors.append(str(e))
                return
            self._stop.wait(0.5)

    def total(self):
        return sum(self.totals)

    def stop(self):
        self._stop.set()
        self._thread.join(60)
        check(not self.errors, "load failed: %s" % self.errors[:3])
        return self.total()
