#!/usr/bin/python3
"""Round robin and failover across OAP endpoints: endpoints are a dead
address and two stand-ins. Every snapshot arrives at one of the two, both
take calls, the dead one is skipped after failing, and each stand-in sees
one connection."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-failover") as wd:
        env = oaplib.Env(args, wd)
        a = oaplib.Standin(wd, name="oap-a").start()
        b = oaplib.Standin(wd, name="oap-b").start()
        dead = "127.0.0.1:%d" % oaplib.free_port()
        try:
            canopy = env.collector({
                "skywalking": oaplib.sw_exporter_yaml([dead, a.target, b.target], timeout="3s")
                + "\n" + oaplib.retry_yaml(),
            }, flush_interval="100ms")
            canopy.start(env.admin_port)
            total = 0
            for _ in range(3):
                total += int(env.loadgen(agents=2, batches=20, batch_size=50, depth=8, tasks=4)["snapshots"])

            def arrived():
                ka = {(x["taskId"], x["traceSegmentId"], x["sequence"]) for x in a.get("/snapshots")}
                kb = {(x["taskId"], x["traceSegmentId"], x["sequence"]) for x in b.get("/snapshots")}
                return len(ka | kb) >= total and (ka, kb)
            ka, kb = oaplib.wait_for("all %d snapshots at A or B" % total, arrived, 60)
            check(len(ka | kb) == total, "expected %d distinct snapshots, got %d" % (total, len(ka | kb)))
            sa, sb = a.stats(), b.stats()
            ca, cb = sa["calls_ok"].get("collectSnapshot", 0), sb["calls_ok"].get("collectSnapshot", 0)
            check(ca > 0 and cb > 0, "round robin: A took %d calls, B %d" % (ca, cb))
            check(sa["connections"] == 1 and sb["connections"] == 1,
                  "connections: A %d, B %d" % (sa["connections"], sb["connections"]))
            fo = canopy.metric_check("canopy_skywalking_failovers_total", lambda v: v >= 1,
                                     "no failover counted away from the dead endpoint")
            check(dead in canopy.log(), "the dead endpoint is never named in the log")
            log("A: %d calls, B: %d calls, failovers %s, %d snapshots" % (ca, cb, fo, total))
        finally:
            env.close()
            a.stop()
            b.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
