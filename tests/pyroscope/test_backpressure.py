#!/usr/bin/python3
"""Past max_pending_bytes the pyroscope exporter stops taking chunks: the
core's retry_on_failure holds them (CN_RETRY, counted in
canopy_exporter_retries_total) instead of the exporter's memory. When the
server comes back every snapshot is pushed, none twice, and the file exporter
beside it never waited."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402

TASKS = 40  # 40 profiles per interval fill 64 KiB of pending pushes within a few intervals


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("pyroscope-backpressure") as wd:
        env = oaplib.Env(args, wd)
        server = pyrolib.standin_pyroscope.Standin(wd).start()
        port = server.port
        server.stop()  # away from the start
        load = None
        try:
            canopy = env.collector(
                {"pyroscope": pyrolib.pyroscope_yaml(
                    "http://127.0.0.1:%d" % port,
                    extra="    max_pending_bytes: 64KiB\n" + oaplib.retry_yaml(max_interval="1s") + "\n"),
                 "file": oaplib.file_exporter_yaml(env.files)})
            canopy.start(env.admin_port)
            load = oaplib.SteadyLoad(env, agents=2, batches=4, batch_size=200, depth=24, tasks=TASKS)

            def held():
                retries = canopy.metric("canopy_exporter_retries_total") or 0
                return retries >= 3 and canopy.metric("canopy_pyroscope_pending_bytes") > 64 * 1024
            oaplib.wait_for("the exporter to hand chunks back to the core", held, 40, interval=0.5)
            sent = load.stop()
            load = None
            oaplib.wait_for("the file exporter to have every snapshot",
                            lambda: len(oaplib.read_jsonl_dir(env.files)) == sent, 10, interval=0.2)
            server.port = port
            server.start()
            log("server back after %d snapshots were sent; pending %d bytes"
                % (sent, canopy.metric("canopy_pyroscope_pending_bytes")))
            oaplib.wait_for("every snapshot pushed", lambda: sum(p.samples for p in server.all_pushes()) == sent,
                            60, interval=0.5)
            time.sleep(1)
            pushes = server.all_pushes()
            keys = [(p.key(), p.from_s) for p in pushes]
            check(len(keys) == len(set(keys)), "an interval was pushed twice")
            check(sum(p.samples for p in pushes) == sent, "more pushed than sent")
            dropped = canopy.metric("canopy_exporter_failed_snapshots_total")
            check(dropped == 0, "%r snapshots dropped" % dropped)
            log("%d snapshots of %d tasks held back by the core, then pushed once each in %d pushes"
                % (sent, TASKS, len(pushes)))
        finally:
            if load:
                load.stop()
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
