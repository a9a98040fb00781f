#!/usr/bin/python3
"""A chunk bigger than max_snapshots_per_call goes as several calls; when
one fails half way (the stand-in aborts streams after K messages), the
core's retry of the chunk resumes after the calls the OAP accepted: every
snapshot arrives, and the only snapshots received twice are those of the
calls that failed."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402

PER_CALL = 100
FAILS = 3
AFTER = 40


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-partial") as wd:
        env = oaplib.Env(args, wd)
        oap = oaplib.Standin(wd).start()
        try:
            canopy = env.collector({
                "skywalking": oaplib.sw_exporter_yaml([oap.target], extra="    max_snapshots_per_call: %d" % PER_CALL)
                + "\n" + oaplib.retry_yaml(initial="100ms", max_interval="500ms"),
            }, flush_interval="1s", max_snapshots=5000)
            canopy.start(env.admin_port)
            # Fail the 3rd call of the first chunk after AFTER messages, FAILS times in a row.
            oap.set_mode("ok")
            total = int(env.loadgen(agents=1, batches=1, batch_size=1, depth=4, tasks=1)["snapshots"])
            oaplib.wait_for("the warm-up snapshot", lambda: oap.stats()["snapshots_stored"] >= total, 20)
            oap.set_mode("fail", code="UNAVAILABLE", methods=["collectSnapshot"], after=AFTER, count=FAILS, skip=2)
            # One task, one chunk (max_snapshots above its size): calls of PER_CALL each.
            r = env.loadgen(agents=2, batches=10, batch_size=50, depth=6, tasks=1)
            total += int(r["snapshots"])
            oaplib.wait_for("all %d snapshots" % total, lambda: oap.stats()["snapshots_stored"] >= total, 60)
            oaplib.check_segments(oap, expected=total)
            s = oap.stats()
            failed = s["calls_failed"].get("collectSnapshot:UNAVAILABLE", 0)
            check(failed == FAILS, "expected %d failed calls, saw %r" % (FAILS, s["calls_failed"]))
            # Each failed call stored AFTER snapshots that its retry sends again. Without the resume,
            # every retry would also resend the two calls accepted before the failure.
            check(s["duplicates"] <= FAILS * AFTER, "%d duplicates: more than the failed calls' %d"
                  % (s["duplicates"], FAILS * AFTER))
            log("%d snapshots, %d calls OK, %d calls failed half way, %d received twice (bound %d)"
                % (total, s["calls_ok"].get("collectSnapshot", 0), failed, s["duplicates"], FAILS * AFTER))
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
