#!/usr/bin/python3
"""service.memory_limit with an exporter that cannot deliver: intake pauses,
then refuses, and nothing is lost.

The stand-in OAP is down and the skywalking exporter (no spool) retries
forever, so every batch it holds stays in memory. With memory_limit at
2 MiB:

  * the nng receiver's contexts pause before taking requests
    (canopy_receiver_intake_pauses_total > 0): the agents' requests wait in
    their connections instead of being decoded only to be refused;
  * a pause ends after 250 ms, so with the exporter still stuck the agents
    get retryable 'overloaded' replies (canopy_memory_limit_refused_batches_total
    and the loadgen's errors > 0) instead of silence;
  * the batches held never pass the limit by more than the requests the
    contexts were decoding (canopy_batch_bytes, sampled);
  * once the OAP is back, every snapshot is stored exactly once: the refused
    batches were resent, none was lost or counted twice."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

LIMIT = 2 << 20
CONTEXTS = 16


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-memory-limit") as wd:
        oap = sl.oaplib.Standin(wd)
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {
            "skywalking": sl.oaplib.sw_exporter_yaml([oap.target], timeout="2s") + "\n"
            + sl.oaplib.retry_yaml(initial="200ms", max_interval="500ms", max_elapsed="0s"),
        }, flush_interval="200ms", memory_limit="2MiB")
        cfg = cfg.replace('  nng:\n    listen: ["%s"]\n' % url,
                          '  nng:\n    listen: ["%s"]\n    contexts: %d\n' % (url, CONTEXTS))
        col = sl.Collector(args.build_dir, wd, cfg)
        col.validate()
        lg = None
        try:
            col.start(admin)  # the OAP is not started yet: the exporter cannot deliver
            lg = sl.Loadgen(args.build_dir, url, agents=4, batches=20, batch_size=256, depth=20, tasks=2,
                            timeout=120, attempt_timeout=5000, seed=7)
            peak = 0.0

            def refused():
                nonlocal peak
                peak = max(peak, col.metric("canopy_batch_bytes") or 0)
                return (col.metric("canopy_memory_limit_refused_batches_total") or 0) > 0
            sl.wait_for("a refusal at memory_limit with the OAP down", refused, 60, interval=0.05)
            pauses = col.metric("canopy_receiver_intake_pauses_total")
            log("intake paused %d times before the first refusal; batches held peaked at %.2f MiB "
                "(limit %.2f MiB)" % (pauses, peak / 2**20, LIMIT / 2**20))
            check(pauses > 0, "the receiver never paused its intake at memory_limit")
            # Each context may be decoding one request when the limit is met: 256 snapshots of 20
            # frames are under 64 KiB decoded.
            t_end = time.time() + 2
            while time.time() < t_end:
                peak = max(peak, col.metric("canopy_batch_bytes") or 0)
                time.sleep(0.05)
            bound = LIMIT + CONTEXTS * (64 << 10)
            check(peak <= bound, "batches held peaked at %d bytes, past memory_limit %d + %d contexts x 64 KiB"
                  % (peak, LIMIT, CONTEXTS))
            check(lg.errors > 0 or lg.resent > 0 or lg.running(),
                  "the loadgen saw no refusal (errors=%d resent=%d)" % (lg.errors, lg.resent))
            oap.start()
            r = lg.result(150)
            check(r["rc"] == 0 and r["acked"] == r["sent"], "loadgen not fully acked: %r" % r)
            total = int(r["snapshots"])
            sl.wait_for("all %d snapshots at the OAP" % total,
                        lambda: oap.stats()["snapshots_stored"] >= total, 60, interval=0.25)
            time.sleep(1)  # a duplicate would show now
            s = oap.stats()
            sl.oaplib.check_segments(oap)
            refusals = col.metric("canopy_memory_limit_refused_batches_total")
            pauses = col.metric("canopy_receiver_intake_pauses_total")
            rc = col.stop(60)
            check(rc == 0, "canopy exited with %s" % rc)
            print(sl.report_line(sent=total, oap_stored=s["snapshots_stored"], oap_duplicates=s["duplicates"],
                                 lost=total - s["snapshots_stored"], intake_pauses=pauses,
                                 memory_refusals=refusals, loadgen_resent=r.get("resent_seen", 0),
                                 peak_batch_mib=round(peak / 2**20, 2)), flush=True)
            check(s["snapshots_stored"] == total, "stored %d of %d snapshots" % (s["snapshots_stored"], total))
            if s["duplicates"]:
                log("note: the OAP received %d snapshots twice (a call cut by a timeout was resent whole)"
                    % s["duplicates"])
        finally:
            if lg:
                lg.stop()
            col.stop(30)
            oap.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
