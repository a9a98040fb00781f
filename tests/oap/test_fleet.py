#!/usr/bin/python3
"""The whole path, as in production: stand-in OAP <- canopy (skywalking
exporter + tasks.skywalking) <- a real `gunicorn -k gevent -w 4` fleet with
the canopy agent. A task created at the stand-in reaches every worker;
profiled requests' snapshots arrive with sequence 0 and dense sequences per
segment; each worker instance reports the task finished when it ends; and
the stand-in saw one gRPC connection from canopy, not one per worker."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402

WORKERS = 4
TASK_LEFT_S = 20  # the task is created with StartTime in the past so it ends this soon


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    with oaplib.Workdir("sw-fleet") as wd:
        env = oaplib.Env(args, wd)
        fleet = oaplib.Fleet(args.build_dir, wd, env.url, workers=WORKERS).require_agent()
        oap = oaplib.Standin(wd).start()
        try:
            canopy = env.collector(
                {"skywalking": oaplib.sw_exporter_yaml([oap.target])},
                tasks="  skywalking:\n    exporter: skywalking\n    poll_interval: 1s\n", flush_interval="300ms")
            canopy.start(env.admin_port)
            task = oap.create_ending_task(TASK_LEFT_S)
            fleet.start()
            n = oap.wait_notified(task["taskId"], WORKERS)
            log("OAP notified %d instances of the task: %s" % (len(n), sorted(n)))
            check(all(v == 1 for v in n.values()), "an instance was notified more than once: %r" % n)
            time.sleep(1.0)  # the workers' next command poll brings the task from canopy's registry

            log("%d /checkout requests served" % fleet.drive("/checkout", seconds=6))

            def finished():
                f = [x for x in oap.get("/finish") if x["taskId"] == task["taskId"]]
                return len({x["serviceInstance"] for x in f}) >= WORKERS and f
            fin = oaplib.wait_for("a finish report from every worker when the task ends", finished,
                                  TASK_LEFT_S + 30, interval=0.5)
            insts = sorted({x["serviceInstance"] for x in fin})
            check(set(insts) == set(n), "finish reports from %r, notified %r" % (insts, sorted(n)))

            oaplib.wait_for("snapshots at the OAP", lambda: oap.stats()["snapshots_stored"] > 0, 10)
            time.sleep(1)
            seg = oaplib.check_segments(oap)
            check(task["taskId"] in seg["tasks"], "no snapshot for the task: %r" % list(seg["tasks"]))
            s = oap.stats()
            check(s["connections"] == 1, "the OAP saw %d connections, not one: %r" % (s["connections"], s["peers"]))
            log("OAP: %d snapshots in %d segments; finish reports from %d workers; %d connection"
                % (seg["snapshots"], seg["segments"], len(insts), s["connections"]))
        finally:
            fleet.stop()
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
