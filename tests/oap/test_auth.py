#!/usr/bin/python3
"""Authentication: with a wrong token the stand-in refuses every call as
UNAUTHENTICATED and canopy logs it clearly (and drops, counted: no retry
can fix a token); with the right token everything arrives."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-auth") as wd:
        env = oaplib.Env(args, wd)
        oap = oaplib.Standin(wd, token="right-token").start()
        try:
            bad = env.collector({"skywalking": oaplib.sw_exporter_yaml([oap.target], token="wrong-token")},
                                name="canopy-bad")
            bad.start(env.admin_port)
            env.loadgen(agents=1, batches=5, batch_size=20, depth=5, tasks=1)
            oaplib.wait_for("the refusal in canopy's log",
                            lambda: "refused the authentication token" in bad.log(), 20)
            oaplib.wait_metric(bad, "canopy_skywalking_chunks_failed_total", lambda v: v >= 1,
                               "the drop to be counted", 10)
            line = [l for l in bad.log().splitlines() if "refused the authentication token" in l][0]
            log("canopy says: %s" % line.strip())
            s = oap.stats()
            check(s["auth_failures"] >= 1 and s["snapshots_stored"] == 0, "stand-in: %r" % s)
            # The refusal is final: nothing is tried again after it, not even after the retry policy's
            # first interval (1 s). Retries before it are fine: on a loaded machine the first call can
            # run into the exporter's 10 s timeout, and that failure is retried.
            retried = bad.metric("canopy_skywalking_chunks_retried_total")
            check(retried == 0 or "will be retried" in bad.log(), "%s retries, none for a reason but the token" % retried)
            time.sleep(3)
            check(bad.metric("canopy_skywalking_chunks_retried_total") == retried, "a token refusal was retried")
            s = oap.stats()  # a call that timed out on canopy's side may have reached the stand-in late
            bad.stop()

            good = env.collector({"skywalking": oaplib.sw_exporter_yaml([oap.target], token="right-token")},
                                 name="canopy-good")
            good.start(env.admin_port)
            total = int(env.loadgen(agents=2, batches=10, batch_size=20, depth=5, tasks=2)["snapshots"])
            oaplib.wait_for("all %d snapshots with the right token" % total,
                            lambda: oap.stats()["snapshots_stored"] >= total, 30)
            oaplib.check_segments(oap, expected=total)
            check(oap.stats()["auth_failures"] == s["auth_failures"], "the right token was refused")
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
