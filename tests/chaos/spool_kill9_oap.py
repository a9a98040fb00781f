#!/usr/bin/python3
"""kill -9 of the collector in the middle of a loadgen run, with the spool on
(fsync: interval) in front of the skywalking exporter, then a restart.

The stand-in OAP stores each (task, segment, sequence) once whatever it
receives, and counts raw receipts. Required: every snapshot stored (stored ==
sent, every segment dense from 0). Reported, not required: raw duplicates.
The OAP has no read-back (no cb_recover), so the call in flight when the
collector died (the stand-in kept the part of the stream it had read, the
collector never saw the ack) and a delivery not yet in the delivery log are
sent again after the restart; the OAP overwrites them."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-kill9-oap") as wd:
        oap = sl.oaplib.Standin(wd)
        url = "ipc://%s/canopy.sock" % wd
        spool_dir = os.path.join(wd, "spool")
        admin = sl.free_port()
        cfg = sl.config(url, admin, {
            "skywalking": sl.oaplib.sw_exporter_yaml([oap.target], timeout="5s") + "\n"
            + sl.oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s") + "\n"
            + sl.spool_yaml(spool_dir, fsync="interval"),
        }, shutdown_timeout="30s")
        col = sl.Collector(args.build_dir, wd, cfg)
        lg = None
        try:
            oap.start()
            col.start(admin)
            lg = sl.Loadgen(args.build_dir, url, 8, 600, batch_size=32, depth=12, tasks=4, timeout=80,
                            attempt_timeout=1500)

            def mid_run():
                check(lg.running(), "the loadgen finished before the kill")
                # Kill as soon as acked data sits in the spool: waiting for a
                # second or for the OAP's first store let a quiet machine's
                # loadgen (done in ~1.3 s) finish first.
                return lg.started and sl.spool_bytes(spool_dir) > 0
            sl.wait_for("the run to be under way", mid_run, 60, interval=0.05)
            col.kill9()
            at_kill = oap.stats()
            log("kill -9: %d snapshots stored at the OAP, loadgen acked ~%d/%d batches"
                % (at_kill["snapshots_stored"], lg.acked, lg.total_batches))
            time.sleep(0.3)
            t_restart = time.time()
            col.start(admin)
            res = lg.result(90)
            check(res["rc"] == 0 and res["acked"] == lg.total_batches, "loadgen not fully acked: %r" % res)
            total = lg.snapshots
            sl.wait_for("all %d snapshots at the OAP" % total,
                        lambda: oap.stats()["snapshots_stored"] >= total, 60, interval=0.25)
            recovery = time.time() - t_restart
            time.sleep(1)
            s = oap.stats()
            seg = sl.oaplib.check_segments(oap)
            check(col.stop(60) == 0, "canopy failed to stop")
            replay = sl.grep(col.all_logs(), r"(\d+) records \((\d+) bytes\) from before the restart will be replayed")
            print(sl.report_line(sent=total, oap_stored=s["snapshots_stored"], oap_received=s["snapshots_received"],
                                 oap_duplicates=s["duplicates"], lost=total - s["snapshots_stored"],
                                 replayed_records=replay[0][0] if replay else 0, recovery_s=recovery), flush=True)
            print("lost=%d raw_dup=%d (sent %d, stored %d, each key stored once; %d snapshots received twice, "
                  "recovery %.1f s)" % (total - s["snapshots_stored"], s["duplicates"], total, s["snapshots_stored"],
                                        s["duplicates"], recovery), flush=True)
            check(s["snapshots_stored"] == total and seg["snapshots"] == total,
                  "OAP stored %d of %d" % (s["snapshots_stored"], total))
            check(replay, "nothing was replayed after the restart")
        finally:
            if lg:
                lg.stop()
            col.stop(30)
            oap.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
