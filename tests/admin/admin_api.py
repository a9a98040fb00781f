"""Integration: the admin HTTP API, the task CLI, /metrics and the profile exporters.

A collector runs with merge_by_task, the folded, pprof and flamegraph exporters
and the jsonl file exporter. Tasks are created with `canopy task create` and
the API; canopy-loadgen sends snapshots for them; then:
  - /metrics parses as strict Prometheus text and its counters match loadgen;
  - the live folded, SVG and pprof renders add up to the snapshots received;
  - cancelling the tasks (CLI) makes the exporters write <taskId>.folded,
    .pb.gz and .svg, which agree with the jsonl lines;
  - an exporter that fails past its retry budget turns /readyz to 503.

    admin_api.py --bin build/bin
"""
import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adminutil as au  # noqa: E402

BIN = None

CONFIG = """\
receivers:
  nng:
    listen: [ipc://@DIR@/c.sock]
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  live: {}
  folded:
    directory: @DIR@/out
  pprof:
    directory: @DIR@/out
  flamegraph:
    directory: @DIR@/out
    width: 1000
  file:
    directory: @DIR@/jsonl
  folded/broken:
    directory: @DIR@/broken
    retry_on_failure: {initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 1s}
service:
  telemetry:
    http:
      listen: @ADMIN@
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [live, folded, pprof, flamegraph, file, folded/broken]
"""

SVG = "{http://www.w3.org/2000/svg}"


def folded_total(text):
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        assert stack and count.isdigit(), "bad folded line %r" % line
        total += int(count)
    return total


def svg_frames(data):
    root = ET.fromstring(data)  # well-formed XML or it raises
    assert root.tag == SVG + "svg", root.tag
    frames = root.find(".//%sg[@id='frames']" % SVG)
    return [g.find(SVG + "title").text for g in frames.findall(SVG + "g")]


def pprof_top(path):
    """`go tool pprof -top` output, or None when Go is not installed."""
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go") else None)
    if not go:
        return None
    home = tempfile.mkdtemp(prefix="canopy-go-")
    try:
        out = subprocess.run([go, "tool", "pprof", "-top", path], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, HOME=home, GOCACHE=os.path.join(home, "cache"),
                                      GOFLAGS="-mod=mod", PPROF_TMPDIR=home))
        assert out.returncode == 0, out.stderr
        return out.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)


class AdminApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = au.Collector(BIN, CONFIG).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.c.stop()
        log = cls.c.read_log()
        cls.c.cleanup()
        if rc != 0:
            raise AssertionError("canopy exited %s:\n%s" % (rc, log[-4000:]))

    def test_1_health_and_ui(self):
        r = self.c.get("/healthz")
        self.assertEqual((r.status, r.text), (200, "ok\n"))
        self.assertEqual(self.c.get("/readyz").status, 200)
        r = self.c.get("/")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.headers["location"], "/ui/")
        for path, ctype in (("/ui", "text/html"), ("/ui/", "text/html"), ("/ui/app.js", "text/javascript"),
                            ("/ui/style.css", "text/css")):
            r = self.c.get(path)
            self.assertEqual(r.status, 200, path)
            self.assertTrue(r.headers["content-type"].startswith(ctype), r.headers)
            # Nothing is fetched from the internet.
            self.assertNotRegex(r.text, r"https?://", path)
        self.assertIn("create-form", self.c.get("/ui/").text)
        self.assertEqual(self.c.get("/ui/nope.js").status, 404)

    def test_2_cli_help(self):
        for args in (("--help",), ("create", "--help"), ("list", "--help"), ("cancel", "--help")):
            out = self.c.cli(*args)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("Usage: canopy task", out.stdout)
        self.assertNotEqual(self.c.cli("create", "--service", "x").returncode, 0)

    def test_3_create_list_errors(self):
        out = self.c.cli("create", "--service", "loadgen", "--endpoint", "/checkout", "--duration", "5m",
                         "--dump-period", "10ms", "--id", "task-0")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "task-0")
        out = self.c.cli("create", "--service", "shop", "--endpoint", "/cart")
        self.assertEqual(out.returncode, 0, out.stderr)
        generated = out.stdout.strip()
        self.assertRegex(generated, r"^task-[0-9a-f]{12}$")
        t = self.c.task(generated)
        self.assertEqual((t["source"], t["status"], t["duration_ms"], t["dump_period_ms"], t["max_sampling_count"]),
                         ("admin", "running", 600000, 10, 5))
        # Through the API directly, with every field.
        r = au.http("POST", self.c.admin + "/api/v1/tasks",
                    {"id": "task-1", "service": "loadgen", "endpoint": "/x", "duration": 300000,
                     "min_duration_threshold": "5ms", "dump_period": "20ms", "max_sampling_count": 9})
        self.assertEqual(r.status, 201, r.text)
        self.assertEqual(r.json()["min_duration_threshold_ms"], 5)
        out = self.c.cli("list")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"(?m)^task-0\s+running\s+admin\s+loadgen\s+/checkout\s+0\s+0\s+4m")

        dup = self.c.cli("create", "--service", "loadgen", "--endpoint", "/x", "--id", "task-0")
        self.assertEqual(dup.returncode, 1)
        self.assertIn("already exists", dup.stderr)
        bad = self.c.cli("create", "--service", "s", "--endpoint", "/x", "--duration", "5x")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("duration", bad.stderr)
        api = self.c.admin + "/api/v1/tasks"
        cases = [
            ("POST", api, b'{"service":"s","endpoint":"/x"}', {"Content-Type": "text/plain"}, 415),
            ("POST", api, b"{not json", {"Content-Type": "application/json"}, 400),
            ("POST", api, {"service": "s", "endpoint": "/x", "colour": "red"}, None, 400),
            ("POST", api, {"service": "s"}, None, 400),
            ("POST", api, {"service": "s", "endpoint": "/x", "dump_period": "1ms"}, None, 400),
            ("POST", api, {"service": "s", "endpoint": "/x", "id": "../etc"}, None, 400),
            ("PUT", api, None, None, 405),
            ("GET", api + "/nope", None, None, 404),
            ("DELETE", api + "/nope", None, None, 404),
            ("GET", api + "/nope/folded", None, None, 404),
            ("GET", api, None, {"Host": "evil.example:8888"}, 403),
        ]
        for method, url, body, headers, status in cases:
            r = au.http(method, url, body, headers)
            self.assertEqual(r.status, status, "%s %s %r: %s" % (method, url, body, r.text))
            self.assertIn("error", r.json())
        # A known task without snapshots renders as an empty profile.
        r = self.c.get("/api/v1/tasks/%s/flamegraph.svg" % generated)
        self.assertEqual(r.status, 200)
        self.assertEqual(svg_frames(r.body), [])
        self.assertEqual(self.c.get("/api/v1/tasks/%s/folded" % generated).body, b"")
        out = self.c.cli("cancel", generated)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.c.task(generated)["status"], "ended")

    def test_3b_continuous_task(self):
        """continuous: true (not duration: 0, docs/configuration.md): no end, a window, the same rules as tasks.static."""
        out = self.c.cli("create", "--service", "shop", "--endpoint", "/cont", "--continuous", "--window", "5s",
                         "--max-sampling-count", "3", "--id", "cont-1")
        self.assertEqual(out.returncode, 0, out.stderr)
        t = self.c.task("cont-1")
        self.assertEqual((t["continuous"], t["window_ms"], t["status"], t["remaining_ms"], t["max_sampling_count"]),
                         (True, 5000, "running", None, 3))
        self.assertIsNone(self.c.task("task-0")["window_ms"])
        self.assertFalse(self.c.task("task-0")["continuous"])
        out = self.c.cli("list")
        self.assertRegex(out.stdout, r"(?m)^cont-1\s+running\s+admin\s+shop\s+/cont\s+0\s+0\s+continuous$")
        # The window defaults to 10s.
        r = au.http("POST", self.c.admin + "/api/v1/tasks",
                    {"id": "cont-2", "service": "shop", "endpoint": "/c2", "continuous": True})
        self.assertEqual((r.status, r.json()["window_ms"]), (201, 10000), r.text)
        api = self.c.admin + "/api/v1/tasks"
        for body, what in (({"continuous": True, "duration": "5m"}, "duration: a continuous task never ends"),
                           ({"window": "5s"}, "window: only a continuous task"),
                           ({"continuous": True, "window": "100ms"}, "window: 100 ms is out of range"),
                           ({"continuous": "yes"}, "continuous: true or false")):
            body.update(service="shop", endpoint="/bad")
            r = au.http("POST", api, body)
            self.assertEqual(r.status, 400, r.text)
            self.assertIn(what, r.json()["error"])
        bad = self.c.cli("create", "--service", "shop", "--endpoint", "/bad", "--continuous", "--duration", "1m")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("continuous task never ends", bad.stderr)
        # Cancelling is the only end of a continuous task.
        for tid in ("cont-1", "cont-2"):
            out = self.c.cli("cancel", tid)
            self.assertEqual(out.returncode, 0, out.stderr)
            t = self.c.task(tid)
            self.assertEqual((t["status"], t["remaining_ms"]), ("ended", 0))

    def test_4_loadgen_metrics_and_renders(self):
        lg = au.loadgen(BIN, "ipc://%s/c.sock" % self.c.dir, agents=3, batches=10, batch_size=200, depth=12, tasks=2)
        self.assertEqual(lg["sent"], lg["acked"])
        total = int(lg["snapshots"])
        self.assertEqual(total, 3 * 10 * 200)

        def received():
            ts = [self.c.task(t) for t in ("task-0", "task-1")]
            return ts if sum(t["snapshots"] for t in ts) == total else None

        tasks = au.wait_until(received, 20, what="every snapshot in the task profiles")
        for t in tasks:
            self.assertEqual(t["agents"], 3)
            self.assertGreater(t["segments"], 0)

        samples, types, _ = au.parse_prometheus(self.c.get("/metrics").text)
        nng = {"component": "nng"}
        self.assertEqual(au.metric(samples, "canopy_receiver_accepted_snapshots_total", **nng), total)
        self.assertEqual(au.metric(samples, "canopy_receiver_accepted_batches_total", **nng), lg["sent"])
        self.assertEqual(au.metric(samples, "canopy_profile_snapshots_total", store="live"), total)
        self.assertEqual(au.metric(samples, "canopy_profile_dropped_snapshots_total", store="live"), 0)
        self.assertEqual(types["canopy_receiver_accepted_snapshots_total"], "counter")
        self.assertEqual(types["canopy_exporter_queue_capacity"], "gauge")
        self.assertGreaterEqual(au.metric(samples, "canopy_profile_nodes", store="live"), 1)
        for exp in ("folded", "pprof", "flamegraph", "file"):
            au.wait_until(lambda: au.metric(au.parse_prometheus(self.c.get("/metrics").text)[0],
                                            "canopy_exporter_sent_snapshots_total", component=exp) == total,
                          20, what="%s to export every snapshot" % exp)
        self.assertEqual(self.c.get("/metrics").headers["content-type"].split(";")[0], "text/plain")

        for t in tasks:
            base = "/api/v1/tasks/%s" % t["id"]
            self.assertEqual(folded_total(self.c.get(base + "/folded").text), t["snapshots"])
            svg = self.c.get(base + "/flamegraph.svg?width=900")
            self.assertEqual(svg.headers["content-type"], "image/svg+xml")
            frames = svg_frames(svg.body)
            self.assertGreater(len(frames), 12)
            self.assertTrue(frames[0].startswith("all\n(%d samples" % t["snapshots"]), frames[0])
            self.assertIn('width="900"', svg.text[:400])
            pb = self.c.get(base + "/profile.pb.gz")
            self.assertEqual(pb.status, 200)
            self.assertEqual(pb.body[:2], b"\x1f\x8b")
            gzip.decompress(pb.body)
            path = os.path.join(self.c.dir, t["id"] + ".pb.gz")
            with open(path, "wb") as f:
                f.write(pb.body)
            top = pprof_top(path)
            if top is not None:
                m = re.search(r"Total samples = (\d+)", top)
                self.assertIsNotNone(m, top)
                self.assertEqual(int(m.group(1)), t["snapshots"])
                self.assertIn("Type: samples", top)

    def test_5_cancel_writes_files_and_readiness(self):
        for tid in ("task-0", "task-1"):
            out = self.c.cli("cancel", tid)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout.strip(), "cancelled " + tid)
        out_dir = os.path.join(self.c.dir, "out")
        for tid in ("task-0", "task-1"):
            t = self.c.task(tid)
            self.assertEqual(t["status"], "ended")
            paths = [os.path.join(out_dir, tid + s) for s in (".folded", ".pb.gz", ".svg")]
            au.wait_until(lambda: all(os.path.exists(p) for p in paths), 15, what="files of " + tid)
            with open(paths[0]) as f:
                self.assertEqual(folded_total(f.read()), t["snapshots"])
            with open(paths[2], "rb") as f:
                self.assertGreater(len(svg_frames(f.read())), 12)
            with open(paths[1], "rb") as f:
                self.assertEqual(f.read(2), b"\x1f\x8b")
            with open(os.path.join(self.c.dir, "jsonl", tid + ".jsonl")) as f:
                self.assertEqual(sum(1 for _ in f), t["snapshots"])
        self.assertEqual(self.c.get("/readyz").status, 200)

    def test_6_failing_exporter_fails_readiness(self):
        # folded/broken writes into a directory that is now a plain file: every write fails,
        # its 1 s retry budget runs out on the next task's end, and readiness goes.
        broken = os.path.join(self.c.dir, "broken")
        shutil.rmtree(broken)
        open(broken, "w").close()
        r = au.http("POST", self.c.admin + "/api/v1/tasks",
                    {"id": "task-2", "service": "loadgen", "endpoint": "/x", "duration": "5m"})
        self.assertEqual(r.status, 201)
        # loadgen's task names are task-0 and task-1 only: send task-2's snapshots with --tasks 3
        # (task-0 and task-1 have ended; their late snapshots rewrite their files).
        au.loadgen(BIN, "ipc://%s/c.sock" % self.c.dir, agents=1, batches=2, batch_size=30, depth=4, tasks=3)
        au.wait_until(lambda: self.c.task("task-2")["snapshots"] > 0, 10, what="task-2 snapshots")
        self.assertEqual(self.c.cli("cancel", "task-2").returncode, 0)
        r = au.wait_until(lambda: (lambda r: r if r.status == 503 else None)(self.c.get("/readyz")), 15,
                          what="/readyz to fail")
        self.assertIn("folded/broken", r.text)
        samples, _, _ = au.parse_prometheus(self.c.get("/metrics").text)
        self.assertGreater(au.metric(samples, "canopy_exporter_failed_snapshots_total", component="folded/broken")
                           + au.metric(samples, "canopy_profile_file_errors_total", component="folded/broken"), 0)


class AdminListen(unittest.TestCase):
    def test_non_loopback_is_refused(self):
        cfg = CONFIG.replace("listen: @ADMIN@", "listen: 0.0.0.0:@PORT@")
        c = au.Collector(BIN, cfg.replace("@PORT@", str(au.free_port())))
        try:
            with self.assertRaises(RuntimeError):
                c.start()
            self.assertNotEqual(c.proc.wait(10), 0)
            self.assertIn("is not a loopback address", c.read_log())
        finally:
            c.stop()
            c.cleanup()

    def test_port_in_use_keeps_collecting(self):
        import socket
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            cfg = CONFIG.replace("listen: @ADMIN@", "listen: 127.0.0.1:%d" % busy.getsockname()[1])
            c = au.Collector(BIN, cfg).start()
            try:
                self.assertIn("the admin API, /metrics and the web UI are NOT served", c.read_log())
                lg = au.loadgen(BIN, "ipc://%s/c.sock" % c.dir, agents=1, batches=2, batch_size=10, depth=3, tasks=1)
                self.assertEqual(lg["acked"], 2)
            finally:
                self.assertEqual(c.stop(), 0, c.read_log())
                c.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args, rest = ap.parse_known_args()
    BIN = os.path.abspath(args.bin)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
