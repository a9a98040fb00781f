#!/usr/bin/python3
"""Reproduction: a replayed spool record is skipped although the sink never
got it, when a segment reached the sink out of order before a crash.

merge_by_task passes late arrivals on (an agent resends an older batch after
an OVERLOADED refusal or a timeout while later batches of the same segment
were accepted), so a sink can hold sequences 8..15 of a segment and not yet
0..7. The replay filter (core/hwm.c, and the file exporter's cb_recover)
keeps only the highest sequence per segment and skips every replayed
snapshot at or below it: 0..7, still in the spool, are dropped for good.

Deterministic: build the crash state by hand.
  1. canopy (spool + file) takes one batch: one segment, sequences 0..15;
  2. after a clean stop, remove lines 0..7 from the jsonl (the sink had only
     8..15 when the crash came), the spool's cursor file (it is saved every
     fsync_interval, so after a crash it lags behind) and the delivery log
     hwm.log (it would hold the 8..15 delivery only), as kill -9 at the
     wrong moment leaves them;
  3. restart: the record is replayed; 0..7 must be written, 8..15 must not
     be written again.
Exit 0 when the sink ends with 0..15 exactly once."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-repro-order") as wd:
        out = os.path.join(wd, "out")
        spool = os.path.join(wd, "spool")
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {"file": sl.file_yaml(out) + "\n" + sl.spool_yaml(spool)},
                                      flush_interval="100ms")
        col = sl.Collector(args.build_dir, wd, cfg)
        try:
            col.start(admin)
            sl.oaplib.loadgen(args.build_dir, url, agents=1, batches=1, batch_size=16, depth=4, tasks=1,
                              timeout=60, extra=["--segment-len", "16", "--concurrency", "1", "--quiet"])
            sl.wait_for("16 lines", lambda: sl.count_lines(out) == 16, 20)
            check(col.stop() == 0, "canopy failed to stop")

            path = os.path.join(out, "task-0.jsonl")
            lines = open(path).readlines()
            kept = [l for l in lines if json.loads(l)["sequence"] >= 8]
            with open(path, "w") as f:
                f.writelines(kept)
            # The cursor lags after a crash; the delivery log would hold the 8..15
            # delivery only: drop both, so the sink's read-back (cb_recover) is the
            # one authority here.
            # (The pipeline's intake log, a folder beside them, is not the exporter's.)
            for name in os.listdir(spool):
                if os.path.isdir(os.path.join(spool, name)):
                    continue
                if not (name.startswith("seg-") and name.endswith(".log")):
                    os.unlink(os.path.join(spool, name))
            log("crash state: the sink holds sequences 8..15; the spool still holds the record with 0..15")

            col.start(admin)
            sl.wait_for("the replay", lambda: "read back what the sink holds" in col.log(), 20)
            import time
            time.sleep(1.5)
            check(col.stop() == 0, "canopy failed to stop")
            a = sl.audit_jsonl(out)
            seqs = sorted(json.loads(l)["sequence"] for l in open(path))
            log("after the replay the sink holds %s" % seqs)
            check(a["dup"] == 0, "duplicates after the replay: %d" % a["dup"])
            check(seqs == list(range(16)), "lost after the replay: %s" % sorted(set(range(16)) - set(seqs)))
        finally:
            col.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
