#!/usr/bin/python3
"""Pyroscope goes away for 20 s under steady load, then comes back: every
interval of the task arrives exactly once (none lost, none twice), the
intervals stay contiguous, each holds the snapshots taken in it, and the
failed pushes were counted as transport failures and retried with backoff
(a handful of requests, not a storm)."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402

DOWN_S = 20


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("pyroscope-outage") as wd:
        env = oaplib.Env(args, wd)
        server = pyrolib.standin_pyroscope.Standin(wd).start()
        load = None
        try:
            canopy = env.collector(
                {"pyroscope": pyrolib.pyroscope_yaml(server.url, extra=oaplib.retry_yaml(max_interval="2s") + "\n"),
                 "file": oaplib.file_exporter_yaml(env.files)},
                tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"))
            canopy.start(env.admin_port)
            load = oaplib.SteadyLoad(env, agents=2, batches=4, batch_size=50, depth=8, tasks=1)
            oaplib.wait_for("a first push", lambda: server.all_pushes(), 20)
            server.stop()
            down_at = time.time()
            log("stand-in stopped; down for %d s under load" % DOWN_S)
            time.sleep(DOWN_S)
            server.start()
            log("stand-in back on %s" % server.url)
            time.sleep(6)
            sent = load.stop()
            load = None

            def settled():
                times = pyrolib.snapshots_of(env.files, "task-0")
                pushed = sum(p.samples for p in server.all_pushes())
                return len(times) == sent and pushed == sent
            oaplib.wait_for("every snapshot pushed after the outage", settled, 30, interval=0.5)
            times = pyrolib.snapshots_of(env.files, "task-0")
            mine = pyrolib.check_pushes(server.all_pushes(), "task-0", times,
                                        expect_labels={"endpoint": "/checkout", "service_name": "loadgen",
                                                       "env": "test", "region": "eu-1"})
            during = [p for p in mine if down_at - 2 <= p.from_s <= down_at + DOWN_S - 4]
            check(len(during) >= DOWN_S // pyrolib.INTERVAL_S - 3,
                  "only %d intervals from the outage arrived" % len(during))
            failures = canopy.metric("canopy_pyroscope_push_failures_total")
            check(failures and failures >= 1, "no failed push counted during the outage (%r)" % failures)
            # Backoff up to max_interval 2s: about DOWN_S / 2 attempts, never one per interval per task per tick.
            check(failures <= DOWN_S, "%d failed pushes in %d s: a retry storm" % (failures, DOWN_S))
            log("%d snapshots in %d intervals, %d of them from the %d s outage, each once; %d failed pushes retried"
                % (sent, len(mine), len(during), DOWN_S, failures))
        finally:
            if load:
                load.stop()
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
