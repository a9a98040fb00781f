#!/usr/bin/python3
"""The OAP goes away for 20 s during load, then comes back (same port, state
kept as a real OAP's storage would). Agents keep being acked meanwhile (the
data waits in the exporter's bounded queue), and once the OAP is back every
snapshot arrives: none missing, every segment dense from 0."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402

OUTAGE_S = 20


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-outage") as wd:
        env = oaplib.Env(args, wd)
        state = os.path.join(wd, "oap-state.json")
        oap = oaplib.Standin(wd, state_file=state).start()
        try:
            canopy = env.collector({
                "skywalking": oaplib.sw_exporter_yaml([oap.target], timeout="2s")
                + "\n" + oaplib.retry_yaml(initial="200ms", max_interval="2s", max_elapsed="0s"),
            }, flush_interval="200ms")
            canopy.start(env.admin_port)

            load = oaplib.SteadyLoad(env)
            time.sleep(3)
            before = oap.stats()["snapshots_stored"]
            log("stopping the OAP for %d s (%d snapshots stored so far)" % (OUTAGE_S, before))
            oap.stop()
            t_down = time.time()
            time.sleep(OUTAGE_S)
            during = load.total()
            oap.start()
            log("OAP back after %.1f s; loadgen has sent %d snapshots so far" % (time.time() - t_down, during))
            time.sleep(3)
            total = load.stop()
            log("load done: %d snapshots in %d loadgen runs" % (total, len(load.totals)))
            oaplib.wait_for("all %d snapshots at the OAP" % total,
                            lambda: oap.stats()["snapshots_stored"] >= total, 90, interval=0.5)
            s = oap.stats()
            oaplib.check_segments(oap, expected=total)
            retried = canopy.metric_check("canopy_skywalking_chunks_retried_total", lambda v: v > 0,
                                          "no retries counted across a 20 s outage")
            canopy.metric_check("canopy_skywalking_chunks_failed_total", lambda v: v == 0, "chunks failed for good")
            check("is not answering" in canopy.log(), "the outage is not logged")
            check("answers again" in canopy.log(), "the recovery is not logged")
            log("all %d snapshots arrived; %s exports retried; OAP received %d (duplicates %d); "
                "connections since restart: %d" % (total, retried, s["snapshots_received"], s["duplicates"],
                                                   len([p for p in s["peers"]])))
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
