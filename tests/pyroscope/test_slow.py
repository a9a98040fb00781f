#!/usr/bin/python3
"""A slow Pyroscope (5 s per request) does not hold back the other exporters:
each exporter has its own queue and thread in the core, so the file exporter
writes every snapshot as it comes while pushes to the slow server are still
in progress; and the slow pushes are all delivered in the end, each interval
once."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402

SLOW_S = 5.0


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("pyroscope-slow") as wd:
        env = oaplib.Env(args, wd)
        server = pyrolib.standin_pyroscope.Standin(wd, slow_s=SLOW_S).start()
        load = None
        try:
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(server.url, extra="    timeout: 20s\n"),
                                    "file": oaplib.file_exporter_yaml(env.files)},
                                   tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"))
            canopy.start(env.admin_port)
            load = oaplib.SteadyLoad(env, agents=2, batches=4, batch_size=50, depth=8, tasks=1)
            time.sleep(8)
            sent = load.stop()
            load = None
            stopped = time.time()
            oaplib.wait_for("the file exporter to have every snapshot",
                            lambda: len(pyrolib.snapshots_of(env.files, "task-0")) == sent, 10, interval=0.2)
            file_lag = time.time() - stopped
            pushed_then = sum(p.samples for p in server.all_pushes())
            check(file_lag < 3.0, "the file exporter needed %.1f s after the load stopped" % file_lag)
            check(pushed_then < sent, "the slow server already had everything: the test proves nothing")
            log("file exporter complete %.1f s after the load stopped, while Pyroscope had %d of %d snapshots"
                % (file_lag, pushed_then, sent))
            oaplib.wait_for("every snapshot pushed to the slow server",
                            lambda: sum(p.samples for p in server.all_pushes()) == sent, 60, interval=0.5)
            pyrolib.check_pushes(server.all_pushes(), "task-0", pyrolib.snapshots_of(env.files, "task-0"))
            log("the slow server got all %d snapshots in %d pushes" % (sent, len(server.all_pushes())))
        finally:
            if load:
                load.stop()
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
