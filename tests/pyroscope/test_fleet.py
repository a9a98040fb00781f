#!/usr/bin/python3
"""The whole path of docs/pyroscope.md: a real `gunicorn -k gevent -w 2` fleet
with the canopy agent in sampling mode and a static task on /checkout ->
canopy (merge_by_task -> pyroscope + file) -> a stand-in Pyroscope.

  - every push is a pprof `go tool pprof -raw` reads, which Pyroscope files as
    a wall profile (samples/count and wall/nanoseconds = count x dump period);
  - name is the service, and the labels are service_name, endpoint, task_id,
    mode plus the static ones;
  - the intervals are aligned, contiguous, each pushed once, and their sample
    counts add up to the snapshots the collector received for the task
    (the file exporter's), interval by interval;
  - the stacks show the app's checkout code, greenlet-correct."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402

TASK = "pyro-fleet-task"
WORKERS = 2
# sampling (default): wall = count x dump period; greenlet: wall = SkyWalking's durations (ctest runs both).
MODE = os.environ.get("PYRO_FLEET_MODE", "sampling")


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    with oaplib.Workdir("pyroscope-fleet") as wd:
        env = oaplib.Env(args, wd)
        fleet = oaplib.Fleet(args.build_dir, wd, env.url, workers=WORKERS, mode=MODE).require_agent()
        server = pyrolib.standin_pyroscope.Standin(wd).start()
        try:
            canopy = env.collector(
                {"pyroscope": pyrolib.pyroscope_yaml(server.url),
                 "file": oaplib.file_exporter_yaml(env.files)},
                tasks=pyrolib.static_task(TASK, "shop", "/checkout", dump_period="10ms", max_sampling_count=100000))
            canopy.validate()
            canopy.start(env.admin_port)
            fleet.start()
            time.sleep(1.0)  # the workers' first command poll brings the task
            served = fleet.drive("/checkout", seconds=7, clients=6)
            log("%d /checkout requests served" % served)

            def settled():
                times = pyrolib.snapshots_of(env.files, TASK)
                pushed = sum(p.samples for p in server.all_pushes() if p.labels.get("task_id") == TASK)
                return times and pushed == len(times)
            oaplib.wait_for("every snapshot of the task pushed", settled, 30, interval=0.5)
            times = pyrolib.snapshots_of(env.files, TASK)
            received = canopy.metric("canopy_exporter_sent_snapshots_total")
            mine = pyrolib.check_pushes(server.all_pushes(), TASK, times,
                                        expect_labels={"service_name": "shop", "endpoint": "/checkout",
                                                       "mode": MODE, "env": "test", "region": "eu-1"})
            for p in mine:
                check(p.app == "shop", "name=%r, expected the service" % p.app)
                check(p.profile.period == 10 * 10**6, "period %d ns, expected the dump period" % p.profile.period)
            if MODE == "greenlet":
                check(sum(p.totals[1] for p in mine) > 0, "greenlet mode: no wall time from durations")
            check(any("checkout" in p.functions for p in mine), "no push shows the app's checkout function")
            check(any(p.functions & {"price", "reserve_inventory"} for p in mine),
                  "no push shows checkout's callees")
            pushed_metric = canopy.metric("canopy_pyroscope_pushed_snapshots_total")
            check(pushed_metric == len(times), "canopy_pyroscope_pushed_snapshots_total=%r, the task had %d snapshots"
                  % (pushed_metric, len(times)))
            check(canopy.metric("canopy_pyroscope_pushes_total") == len(mine), "pushes metric differs")
            raw = pyrolib.go_pprof_raw(server.save_raw(mine[len(mine) // 2]))
            if raw is None:
                log("note: go is not installed; go tool pprof -raw not run")
            else:
                check("samples/count" in raw and "wall/nanoseconds" in raw and "PeriodType: wall nanoseconds" in raw,
                      "go tool pprof -raw:\n%s" % raw[:800])
                check("checkout" in raw, "go tool pprof -raw shows no checkout frame")
            log("%d snapshots (file exporter: %d, exporters' sent total %r) in %d pushes over %d contiguous %d s "
                "intervals, each once; go tool pprof -raw reads them"
                % (sum(p.samples for p in mine), len(times), received, len(mine),
                   (mine[-1].from_s - mine[0].from_s) // pyrolib.INTERVAL_S + 1, pyrolib.INTERVAL_S))
        finally:
            fleet.stop()
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
