"""End to end: a task created with `canopy task create`, the example gunicorn +
gevent fleet under load, then the task's flame graph, folded stacks and pprof.

  - the SVG is well-formed XML and holds the app's handler (checkout);
  - `go tool pprof -top` lists checkout;
  - the folded counts add up to the snapshots the collector received for the
    task (the jsonl file exporter's lines, and the API's count);
  - cancelling the task writes <taskId>.folded/.pb.gz/.svg that agree.

Environment as for tests/python (CANOPY_BIN, PYTHONPATH with build/python, CANOPY_EXAMPLE).
"""
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import adminutil as au  # noqa: E402
import fleet  # noqa: E402
from admin_api import folded_total, pprof_top, svg_frames  # noqa: E402

CONFIG = """\
receivers:
  nng:
    listen: [ipc://@DIR@/c.sock]
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  live: {}
  file:
    directory: @DIR@/jsonl
  folded:
    directory: @DIR@/out
  pprof:
    directory: @DIR@/out
  flamegraph:
    directory: @DIR@/out
service:
  telemetry:
    http:
      listen: @ADMIN@
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [live, file, folded, pprof, flamegraph]
"""

HANDLER = os.path.join(fleet.EXAMPLE, "app.py") + ".checkout: "


def jsonl_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class FleetFlameGraph(unittest.TestCase):
    def setUp(self):
        self.c = au.Collector(os.path.dirname(fleet.canopy_bin()), CONFIG).start()
        self.work = fleet.Workdir(prefix="canopy-fg-")
        self.fleet = None

    def tearDown(self):
        if self.fleet:
            self.fleet.stop()
        rc = self.c.stop()
        log = self.c.read_log()
        self.c.cleanup()
        self.work.cleanup()
        self.assertEqual(rc, 0, log[-3000:])

    def test_task_from_cli_to_flame_graph(self):
        out = self.c.cli("create", "--service", "shop", "--endpoint", "/checkout", "--duration", "5m",
                         "--dump-period", "10ms", "--max-sampling-count", "9")
        self.assertEqual(out.returncode, 0, out.stderr)
        task_id = out.stdout.strip()
        self.assertRegex(task_id, r"^task-[0-9a-f]{12}$")

        self.fleet = fleet.Fleet(self.work, workers=3, env={"CANOPY_COLLECTOR": "ipc://%s/c.sock" % self.c.dir})
        self.fleet.start()
        au.wait_until(lambda: len(self.fleet.worker_stats()) >= 3 and
                      all(s.get("tasks") for s in self.fleet.worker_stats().values()), 20,
                      what="the task in every worker")
        result = fleet.load(self.fleet.base + "/checkout", requests=150, concurrency=50)
        self.assertEqual(result["failed"], 0, result["stderr"])
        # Workers flush what they buffer when they exit.
        self.fleet.stop()
        self.fleet = None

        jsonl = os.path.join(self.c.dir, "jsonl", task_id + ".jsonl")

        def settled():
            t = self.c.task(task_id)
            n = jsonl_lines(jsonl)
            return t if t["snapshots"] > 0 and t["snapshots"] == n else None

        au.wait_until(settled, 20, what="the task's snapshots in the API and the jsonl")

        def stable():
            before = self.c.task(task_id)["snapshots"]
            time.sleep(0.5)
            t = self.c.task(task_id)
            return t if t["snapshots"] == before else None

        t = au.wait_until(stable, 10, what="a stable snapshot count")
        received = t["snapshots"]
        self.assertGreaterEqual(t["agents"], 2)
        self.assertEqual(t["status"], "running")

        base = "/api/v1/tasks/" + task_id
        frames = svg_frames(self.c.get(base + "/flamegraph.svg").body)
        self.assertTrue(frames[0].startswith("all\n(%d samples" % received), frames[0])
        self.assertTrue(any(f.startswith(HANDLER) for f in frames), "checkout missing from the flame graph")

        self.assertEqual(folded_total(self.c.get(base + "/folded").text), received)
        self.assertEqual(received, jsonl_lines(jsonl))

        pb = os.path.join(self.c.dir, task_id + ".pb.gz")
        with open(pb, "wb") as f:
            f.write(self.c.get(base + "/profile.pb.gz").body)
        top = pprof_top(pb)
        if top is None:
            self.skipTest("go is not installed (Debian package golang-go)")
        self.assertRegex(top, r"(?m)\bcheckout$")
        self.assertIn("Total samples = %d" % received, top)

        out = self.c.cli("cancel", task_id)
        self.assertEqual(out.returncode, 0, out.stderr)
        files = [os.path.join(self.c.dir, "out", task_id + s) for s in (".folded", ".pb.gz", ".svg")]
        au.wait_until(lambda: all(os.path.exists(p) for p in files), 15, what="the task's files")
        with open(files[0]) as f:
            self.assertEqual(folded_total(f.read()), received)
        with open(files[2], "rb") as f:
            self.assertTrue(any(fr.startswith(HANDLER) for fr in svg_frames(f.read())))
        top = pprof_top(files[1])
        self.assertRegex(top, r"(?m)\bcheckout$")
        self.assertEqual(self.c.task(task_id)["status"], "ended")


if __name__ == "__main__":
    unittest.main(verbosity=2)
