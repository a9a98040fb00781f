#!/usr/bin/python3
"""The stand-in OAP is down for 30 s while the skywalking exporter has a
spool; load keeps coming, and a file exporter without a spool sits in the
same pipeline.

  * during the outage every batch is acked (it is in the spool), the spool
    grows, and the file exporter keeps writing: its files hold everything
    sent so far;
  * half way through the outage canopy is restarted with SIGTERM: the
    skywalking exporter gives up at shutdown_timeout, leaves its records in
    the spool, and the new process replays them once the OAP is back;
  * after the OAP returns, every (task, segment, sequence) is stored at the
    stand-in exactly once: stored == sent (raw receipts and duplicates are
    reported), every segment dense from 0; the jsonl files hold every
    snapshot exactly once as well."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

OUTAGE_S = 30


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-oap-down") as wd:
        oap = sl.oaplib.Standin(wd, state_file=os.path.join(wd, "oap-state.json"))
        out = os.path.join(wd, "out")
        spool = os.path.join(wd, "spool-sw")
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {
            "skywalking": sl.oaplib.sw_exporter_yaml([oap.target], timeout="2s") + "\n"
            + sl.oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s") + "\n"
            + sl.spool_yaml(spool, fsync="interval"),
            "file": sl.file_yaml(out),
        }, flush_interval="200ms", shutdown_timeout="5s")
        col = sl.Collector(args.build_dir, wd, cfg)
        col.validate()
        stop = threading.Event()
        sent = []          # snapshots of every finished loadgen run
        errors = []
        runs = [0]
        try:
            oap.start()
            col.start(admin)

            def load():
                seed = 0
                while not stop.is_set():
                    seed += 1
                    try:
                        lg = sl.Loadgen(args.build_dir, url, agents=2, batches=10, batch_size=50, depth=12,
                                        tasks=3, timeout=60, attempt_timeout=2000, seed=seed)
                        r = lg.result(70)
                        if r["rc"] != 0 or r["acked"] != r["sent"]:
                            errors.append("loadgen run not fully acked: %r" % r)
                            return
                        sent.append(int(r["snapshots"]))
                        runs[0] += 1
                    except Exception as e:  # noqa: BLE001 - reported by the main thread
                        errors.append(repr(e))
                        return
                    stop.wait(0.3)

            th = threading.Thread(target=load, daemon=True)
            th.start()
            sl.wait_for("some snapshots at the OAP", lambda: oap.stats()["snapshots_stored"] > 0, 30)
            time.sleep(1)
            before = oap.stats()["snapshots_stored"]
            oap.stop()
            t_down = time.time()
            log("OAP stopped (%d snapshots stored so far); down for %d s" % (before, OUTAGE_S))

            # First half of the outage: the file exporter keeps up, the spool grows.
            time.sleep(OUTAGE_S / 2 - 3)
            check(not errors, "load failed during the outage: %s" % errors[:3])
            # Everything acked so far reaches the files within a flush or two,
            # though the OAP is still down.
            sent_mid = sum(sent)
            t_mid = time.time()
            try:
                sl.wait_for("the jsonl files to hold the %d snapshots acked so far" % sent_mid,
                            lambda: sl.count_lines(out) >= sent_mid, 5, interval=0.05)
            except sl.TestFailure:
                raise sl.TestFailure("the file exporter stalled with the OAP: %d lines < %d sent"
                                     % (sl.count_lines(out), sent_mid))
            lines_mid = sl.count_lines(out)
            spool_mid = sl.spool_bytes(spool)
            log("mid-outage: %d snapshots sent and acked, in the jsonl files within %.2f s (%d lines now), "
                "spool %d bytes" % (sent_mid, time.time() - t_mid, lines_mid, spool_mid))
            check(spool_mid > 0, "nothing in the skywalking spool during the outage")

            # Restart canopy while the OAP is still down.
            t_term = time.time()
            rc = col.stop(60)
            t_stopped = time.time()
            check(rc == 0, "canopy exited with %s on SIGTERM" % rc)
            check("stopping with undelivered records in the spool" in col.log(),
                  "no log line about records left in the spool at shutdown:\n%s" % col.log()[-2000:])
            col.start(admin)
            log("canopy restarted with the OAP down (SIGTERM took %.1f s; down %.1f s)"
                % (t_stopped - t_term, time.time() - t_term))
            replay = sl.grep(col.log(), r"(\d+) records \((\d+) bytes\) from before the restart will be replayed")
            check(replay, "the restarted collector found nothing to replay:\n%s" % col.log()[-2000:])

            time.sleep(max(0.0, OUTAGE_S - (time.time() - t_down)))
            t_up = time.time()
            oap.start()
            log("OAP back after %.1f s; %d snapshots sent so far" % (t_up - t_down, sum(sent)))
            time.sleep(2)
            stop.set()
            th.join(90)
            check(not th.is_alive(), "the load thread did not finish")
            check(not errors, "load failed: %s" % errors[:3])
            total = sum(sent)

            def all_stored():
                return oap.stats()["snapshots_stored"] >= total
            sl.wait_for("all %d snapshots at the OAP" % total, all_stored, 60, interval=0.25)
            t_all = time.time()
            time.sleep(1)  # anything more (a duplicate) would show now
            s = oap.stats()
            seg = sl.oaplib.check_segments(oap)
            rc = col.stop(60)
            check(rc == 0, "canopy exited with %s" % rc)
            a = sl.audit_jsonl(out)
            logs = col.all_logs()
            back = sl.log_times(logs, "answers again")
            reconnect = (back[-1] - t_up) if back else -1.0
            print(sl.report_line(sent=total, loadgen_runs=runs[0], oap_stored=s["snapshots_stored"],
                                 oap_received=s["snapshots_received"], oap_duplicates=s["duplicates"],
                                 lost=total - s["snapshots_stored"], jsonl_unique=a["unique"], jsonl_dup=a["dup"],
                                 jsonl_lost=total - a["unique"], replayed_records=replay[-1][0],
                                 recovery_s=t_all - t_up, reconnect_s=reconnect, outage_s=t_up - t_down), flush=True)
            print("lost=%d dup=%d (sent %d, stored at the OAP %d, received %d raw; replayed %.1f s after the "
                  "OAP came back)" % (total - s["snapshots_stored"], s["duplicates"], total, s["snapshots_stored"],
                                      s["snapshots_received"], t_all - t_up), flush=True)
            check(s["snapshots_stored"] == total, "OAP stored %d, sent %d" % (s["snapshots_stored"], total))
            check(seg["snapshots"] == total, "segments hold %d snapshots" % seg["snapshots"])
            check(a["unique"] == total and a["dup"] == 0,
                  "jsonl: %d unique of %d, %d duplicates" % (a["unique"], total, a["dup"]))
            check("is not answering" in logs, "the outage is not logged")
            check("answers again" in logs, "the recovery is not logged")
            if s["duplicates"]:
                log("note: the OAP received %d snapshots twice (a call cut by the outage was resent whole)"
                    % s["duplicates"])
        finally:
            stop.set()
            col.stop(30)
            oap.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
