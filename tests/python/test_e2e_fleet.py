"""End to end: canopy collector + gunicorn -k gevent -w 4 fleet running the example app.

The collector has a static task for /checkout. About 200 concurrent requests
go to /checkout. The task's JSONL must then hold snapshots from at least 3
worker instances, every segment's sequences dense from 0, stacks root first
containing the app's handler, and no request may fail.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

APP = os.path.join(fleet.EXAMPLE, "app.py")


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class FleetEndToEnd(unittest.TestCase):
    def setUp(self):
        self.work = fleet.Workdir()
        self.collector = fleet.Collector(self.work, [{"id": "task-checkout", "endpoint": "/checkout"}]).start()
        self.fleet = None

    def tearDown(self):
        if self.fleet:
            self.fleet.stop()
        self.collector.stop()
        if os.environ.get("CANOPY_KEEP") is None:
            self.work.cleanup()
        else:
            print("kept", self.work.path, file=sys.stderr)

    def test_fleet_profiles_checkout(self):
        self.fleet = fleet.Fleet(self.work, workers=4, env={"CANOPY_COLLECTOR": self.collector.url}).start()
        # Let every worker fetch the task (polled every 300 ms here).
        fleet.wait_until(lambda: all(s.get("tasks") for s in self.fleet.worker_stats().values()), 10,
                         what="the task in the workers")
        result = fleet.load(self.fleet.base + "/checkout", requests=200, concurrency=200)
        self.assertEqual(result["failed"], 0, result["stderr"])
        self.assertEqual(result["ok"], 200)

        # Workers flush at exit (worker_exit), and the collector every 200 ms.
        self.fleet.stop()
        self.fleet = None
        rows = fleet.wait_until(lambda: self.collector.rows("task-checkout"), 10, what="snapshots in the JSONL")
        time.sleep(0.5)
        rows = self.collector.rows("task-checkout")

        instances = {r["serviceInstance"] for r in rows}
        self.assertGreaterEqual(len(instances), 3, "snapshots from %s" % sorted(instances))
        for r in rows:
            self.assertEqual(r["taskId"], "task-checkout")
            self.assertEqual(r["service"], "shop")
            self.assertIsInstance(r["time"], int)
            self.assertGreater(r["time"], 1.5e12)

        segments = fleet.check_segments(self, rows)
        # max_sampling_count 9 per instance, at most 4 instances.
        self.assertLessEqual(len(segments), 9 * 4)

        handler = APP + ".checkout: "
        for r in rows:
            sigs = r["stack"]["codeSignatures"]
            self.assertTrue(sigs, "empty stack")
            for s in sigs:
                # "<filename>.<function>: <lineno>", or the marker between a
                # spawner's frames and a child greenlet's (the shop's
                # _remote_call starts a monkey-patched thread: a greenlet).
                if s != "<greenlet spawn>":
                    self.assertRegex(s, r"^.+\.[^.]+: \d+$")
            self.assertTrue(any(s.startswith(handler) for s in sigs),
                            "handler missing from %s" % sigs)
            # Root first: the app's WSGI entry is above the handler, and the
            # handler above whatever it waits in.
            names = [s.rsplit(": ", 1)[0].rsplit(".", 1)[-1] for s in sigs]
            self.assertLess(names.index("app"), names.index("checkout"))
            self.assertLess(names.index("__call__"), names.index("app"))

        # Greenlet mode follows child greenlets (issue 12): _remote_call's
        # responder thread is a greenlet under gevent, and its switches
        # (recv, sleep) are snapshots rooted at the spawn site.
        children = [r["stack"]["codeSignatures"] for r in rows if "<greenlet spawn>" in r["stack"]["codeSignatures"]]
        self.assertTrue(children, "no snapshot of a child greenlet")
        for sigs in children:
            i = sigs.index("<greenlet spawn>")
            names = [s.rsplit(": ", 1)[0].rsplit(".", 1)[-1] for s in sigs]
            self.assertIn("checkout", names[:i])
            self.assertIn("_remote_call", names[:i])
            self.assertIn("peer", names[i + 1:])

    def test_sampling_mode_sees_cpu_work(self):
        # Sampling mode: time-proportional samples every 10 ms. checkout's
        # CPU work (sign_payment's hashing loop, compute_totals' JSON) runs
        # between switches, where switch-time snapshots cannot see it.
        self.fleet = fleet.Fleet(self.work, workers=2, env={
            "CANOPY_COLLECTOR": self.collector.url, "CANOPY_MODE": "sampling"}).start()
        fleet.wait_until(lambda: all(s.get("tasks") for s in self.fleet.worker_stats().values()), 10,
                         what="the task in the workers")
        self.assertEqual({s["mode"] for s in self.fleet.worker_stats().values()}, {"sampling"})
        result = fleet.load(self.fleet.base + "/checkout", requests=200, concurrency=20)
        self.assertEqual(result["failed"], 0, result["stderr"])
        self.fleet.stop()
        self.fleet = None
        rows = fleet.wait_until(lambda: self.collector.rows("task-checkout"), 10, what="snapshots in the JSONL")
        time.sleep(0.5)
        rows = self.collector.rows("task-checkout")
        fleet.check_segments(self, rows)
        # The innermost frame of the app in each sample (a sample can also
        # land in the middleware, before or after the app's code).
        leaves = [[s for s in r["stack"]["codeSignatures"] if s.startswith(APP + ".")][-1:] for r in rows]
        leaves = [x[0] for x in leaves if x]
        cpu = [x for x in leaves if ".sign_payment: " in x or ".compute_totals: " in x]
        self.assertTrue(cpu, "no sample in checkout's CPU work: %s" % leaves[:20])


if __name__ == "__main__":
    unittest.main()
