"""End to end, child greenlets (issue 12): canopy collector + gunicorn -k gevent
fleet in sampling mode, running the example shop's fan-out endpoints.

/fanout spawns two greenlets that burn CPU 70:30 (quote_prices 35 ms,
quote_taxes 15 ms, no switch inside a burn). The task's JSONL must attribute
70 +- 5 % of the two children's samples to quote_prices, every such stack
must pass through the spawn site (app -> fan_out -> <greenlet spawn>), and no
stack may hold another request's burning greenlet. /fanout/nested (a child
that spawns a grandchild) and /fanout/pool (gevent.pool.Pool.map) likewise.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

APP = os.path.join(fleet.EXAMPLE, "app.py")
MARK = "<greenlet spawn>"


def func(sig):
    return sig if sig == MARK else sig.rsplit(": ", 1)[0].rsplit(".", 1)[-1]


def app_sig(sig):
    return sig.startswith(APP + ".")


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class ChildrenEndToEnd(unittest.TestCase):
    def setUp(self):
        self.work = fleet.Workdir()
        # Many segments per worker, sampled every 10 ms (the least SkyWalking allows): enough samples for
        # the 70:30 split to be measured to a few percent.
        task = dict(dump_period="10ms", max_sampling_count=400)
        self.collector = fleet.Collector(self.work, [
            dict(task, id="task-fanout", endpoint="/fanout"),
            dict(task, id="task-nested", endpoint="/fanout/nested"),
            dict(task, id="task-pool", endpoint="/fanout/pool"),
        ]).start()
        self.fleet = fleet.Fleet(self.work, workers=2, env={
            "CANOPY_COLLECTOR": self.collector.url, "CANOPY_MODE": "sampling"}).start()
        fleet.wait_until(lambda: all(len(s.get("tasks") or ()) == 3 for s in self.fleet.worker_stats().values()),
                         10, what="the tasks in the workers")

    def tearDown(self):
        if self.fleet:
            self.fleet.stop()
        self.collector.stop()
        if os.environ.get("CANOPY_KEEP") is None:
            self.work.cleanup()
        else:
            print("kept", self.work.path, file=sys.stderr)

    def rows(self, task):
        rows = fleet.wait_until(lambda: self.collector.rows(task), 10, what="snapshots of %s" % task)
        time.sleep(0.3)
        rows = self.collector.rows(task)
        fleet.check_segments(self, rows)
        return rows

    def test_fan_out_split_nested_pool(self):
        self.assertEqual({s["mode"] for s in self.fleet.worker_stats().values()}, {"sampling"})
        for path, n in (("/fanout", 120), ("/fanout/nested", 30), ("/fanout/pool", 30)):
            result = fleet.load(self.fleet.base + path, requests=n, concurrency=4)
            self.assertEqual(result["failed"], 0, result["stderr"])
        stats = self.fleet.worker_stats()
        self.fleet.stop()  # workers flush at exit
        self.fleet = None
        followed = sum(s.get("children_followed", 0) for s in stats.values())
        self.assertGreater(followed, 0, stats)

        # /fanout: 70:30 between the two children, every stack stitched.
        rows = self.rows("task-fanout")
        counts = {"quote_prices": 0, "quote_taxes": 0}
        for r in rows:
            sigs = r["stack"]["codeSignatures"]
            names = [func(s) for s in sigs]
            burning = [c for c in counts if c in names]
            self.assertLessEqual(len(burning), 1, "two requests' children in one stack: %s" % names)
            if not burning:
                continue
            counts[burning[0]] += 1
            i = names.index(MARK)
            self.assertEqual(names.count(MARK), 1, names)
            # root first: the WSGI app, the handler at its spawn line, the
            # marker, then the child's own frames.
            self.assertLess(names.index("app"), names.index("fan_out"))
            self.assertEqual(names[i - 1], "fan_out", names)
            self.assertTrue(app_sig(sigs[i - 1]) and "jobs = [gevent.spawn" in self.line(sigs[i - 1]), sigs[i - 1])
            self.assertEqual(names[i + 1], burning[0], names)  # the child's own root frame
            # No hub loop, no other request: the leaf is the burn (or what it calls).
            self.assertNotEqual(names[-1], "run")
        total = sum(counts.values())
        share = counts["quote_prices"] / total if total else 0
        print("fanout: quote_prices %d, quote_taxes %d samples: %.1f %% (burned 70 %%); %d children followed"
              % (counts["quote_prices"], counts["quote_taxes"], 100 * share, followed), file=sys.stderr)
        self.assertGreater(total, 150, counts)
        self.assertAlmostEqual(share, 0.70, delta=0.05)

        # /fanout/nested: the grandchild's stacks carry both spawn sites.
        rows = self.rows("task-nested")
        grand = [[func(s) for s in r["stack"]["codeSignatures"]] for r in rows]
        grand = [n for n in grand if "render_chart" in n]
        self.assertTrue(grand, "no sample of the grandchild")
        for names in grand:
            self.assertEqual(names.count(MARK), 2, names)
            i = names.index(MARK)
            j = names.index(MARK, i + 1)
            self.assertEqual(names[i - 1], "fan_out_nested")
            self.assertEqual(names[j - 1], "build_report")
            self.assertGreater(names.index("render_chart"), j)

        # /fanout/pool: the workers run under map()'s helper greenlet, itself
        # spawned by the handler.
        rows = self.rows("task-pool")
        thumbs = [[func(s) for s in r["stack"]["codeSignatures"]] for r in rows]
        thumbs = [n for n in thumbs if "make_thumbnail" in n]
        self.assertTrue(thumbs, "no sample of the pool's workers")
        for names in thumbs:
            self.assertGreaterEqual(names.count(MARK), 1, names)
            self.assertIn("fan_out_pool", names[:names.index(MARK)])
            self.assertGreater(names.index("make_thumbnail"), len(names) - 1 - names[::-1].index(MARK))

    @staticmethod
    def line(sig):
        import linecache

        path, _, rest = sig.rpartition(".")
        return linecache.getline(path, int(rest.rsplit(": ", 1)[1]))


if __name__ == "__main__":
    unittest.main()
