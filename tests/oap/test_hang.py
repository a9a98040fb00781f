#!/usr/bin/python3
"""The OAP accepts connections but never answers. Deadlines fire (logged as
DEADLINE_EXCEEDED, retried), the file exporter in the same pipeline keeps
receiving everything meanwhile, and when the OAP answers again the retries
deliver every snapshot."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-hang") as wd:
        env = oaplib.Env(args, wd)
        oap = oaplib.Standin(wd).start()
        try:
            canopy = env.collector({
                "skywalking": oaplib.sw_exporter_yaml([oap.target], timeout="1s")
                + "\n" + oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s"),
                "file": oaplib.file_exporter_yaml(env.files),
            }, flush_interval="200ms")
            canopy.start(env.admin_port)
            oap.set_mode("hang", methods=["collectSnapshot"])
            t0 = time.time()
            total = 0
            for _ in range(3):
                total += int(env.loadgen(agents=2, batches=20, batch_size=50, depth=10, tasks=3)["snapshots"])
            n = len(oaplib.wait_for("the file exporter to write all %d snapshots while the OAP hangs" % total,
                                    lambda: (lambda d: d if len(d) >= total else None)(
                                        oaplib.read_jsonl_dir(env.files)), 20))
            log("file exporter: %d snapshots %.1f s after the load started, OAP hanging" % (n, time.time() - t0))
            check(oap.stats()["snapshots_stored"] == 0, "the hung OAP stored snapshots")
            oaplib.wait_for("a deadline to fire", lambda: "DEADLINE_EXCEEDED" in canopy.log(), 15)
            oaplib.wait_metric(canopy, "canopy_skywalking_chunks_retried_total", lambda v: v >= 2,
                               "retries to be counted", 15)
            time.sleep(2)
            oap.set_mode("ok")
            t1 = time.time()
            oaplib.wait_for("all %d snapshots at the OAP after it answers" % total,
                            lambda: oap.stats()["snapshots_stored"] >= total, 60)
            log("OAP answers again: all %d snapshots there %.1f s later" % (total, time.time() - t1))
            oaplib.check_segments(oap, expected=total)
            canopy.metric_check("canopy_skywalking_chunks_failed_total", lambda v: v == 0, "chunks failed for good")
            check(len(oaplib.read_jsonl_dir(env.files)) == total, "the file exporter got extra or missing data")
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
