#!/usr/bin/python3
"""kill -9 of the collector in the middle of a loadgen run, with the spool on
(fsync: interval) in front of the jsonl file exporter, then a restart.

  * the kill lands while the loadgen still has unacked batches, the spool
    holds records the exporter has not committed, and the files already have
    lines;
  * before the restart a torn tail is planted where a crash leaves one: half a
    JSON line at the end of a jsonl file and half a record at the end of the
    spool's last segment; the collector must log both cuts and keep going;
  * the loadgen keeps resending what was not acked (long --timeout);
  * at the end every snapshot is in the jsonl files exactly once.

Prints `lost=0 dup=0` with the figures (sent, received, recovery time =
restart -> all data written) and fails otherwise."""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

AGENTS = 8
BATCHES = 1500
BATCH_SIZE = 32
TASKS = 4
DEPTH = 20

# The spool's fsync policy; interval by default (the case), always or never to compare.
FSYNC = os.environ.get("CANOPY_CHAOS_SPOOL_FSYNC", "interval")

TORN_LINE = b'{"taskId":"task-0","traceSegmentId":"torn-by-the-test","time":17'
# Half a spool record: the magic ("CNSP") and a length, then nothing.
TORN_RECORD = struct.pack("<II", 0x50534E43, 4096) + b"\x01\x02\x03"


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-kill9") as wd:
        out = os.path.join(wd, "out")
        spool = os.path.join(wd, "spool")
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {
            "file": sl.file_yaml(out) + "\n" + sl.spool_yaml(spool, fsync=FSYNC, segment_size="1MiB"),
        }, flush_interval="200ms", shutdown_timeout="60s")
        col = sl.Collector(args.build_dir, wd, cfg)
        col.validate()
        lg = None
        try:
            col.start(admin)
            lg = sl.Loadgen(args.build_dir, url, AGENTS, BATCHES, batch_size=BATCH_SIZE, depth=DEPTH, tasks=TASKS,
                            timeout=80, attempt_timeout=1500)
            expected = lg.snapshots

            # Kill when the loadgen is past its start, still has work, the
            # exporter has written lines and the spool holds records.
            def mid_run():
                check(lg.running(), "the loadgen finished before the kill (acked %d/%d); the machine is too fast "
                      "for this workload" % (lg.acked, lg.total_batches))
                return (lg.started and time.time() - lg.t0 > 1.0 and sl.count_lines(out) > 0
                        and sl.spool_bytes(spool) > 0)
            sl.wait_for("the run to be under way", mid_run, 60, interval=0.05)
            lines_at_kill = sl.count_lines(out)
            spool_at_kill = sl.spool_bytes(spool)
            acked_at_kill = lg.acked
            t_kill = time.time()
            col.kill9()
            log("kill -9 at t=%.2fs of the loadgen run: %d jsonl lines written, %d bytes spooled, loadgen acked "
                "~%d/%d batches (last progress line)" % (t_kill - lg.t0, lines_at_kill, spool_at_kill,
                                                          acked_at_kill, lg.total_batches))
            check(lg.running(), "the loadgen was done at the kill")

            # Plant torn tails, as a crash in the middle of a write leaves them.
            segs = sl.spool_files(spool)
            check(segs, "no spool segment after the kill")
            with open(os.path.join(spool, segs[-1]), "ab") as f:
                f.write(TORN_RECORD)
            jsonl = sorted(n for n in os.listdir(out) if n.endswith(".jsonl"))
            with open(os.path.join(out, jsonl[0]), "ab") as f:
                f.write(TORN_LINE)
            time.sleep(0.5)  # agents notice the collector is gone and start resending

            t_restart = time.time()
            col.start(admin)
            log("restarted in %.2f s" % (time.time() - t_restart))

            res = lg.result(90)
            t_loadgen_done = time.time()
            check(res["rc"] == 0 and res["acked"] == lg.total_batches,
                  "loadgen not fully acked: %r\n%s" % (res, "\n".join(lg.lines[-5:])))

            n, t_all = sl.wait_lines(out, expected, timeout=60, stall=10)
            if n < expected:
                log("only %d of %d lines after the writes stopped; auditing" % (n, expected))
            recovery = t_all - t_restart
            rc = col.stop(90)
            check(rc == 0, "canopy exited with %s after SIGTERM" % rc)

            a = sl.audit_jsonl(out)
            lost = expected - a["unique"]
            logs = col.all_logs()
            replay = sl.grep(logs, r"(\d+) records \((\d+) bytes\) from before the restart will be replayed")
            found = sl.grep(logs, r"found (\d+) lines already written")
            print(sl.report_line(sent=expected, received=a["unique"], lines=a["lines"], lost=lost, dup=a["dup"],
                                 torn_lines=a["bad"], segments=a["segments"], not_dense=len(a["not_dense"]),
                                 resent_batches=res["resent_seen"], replayed_records=replay[0][0] if replay else 0,
                                 recovery_s=recovery, loadgen_s=t_loadgen_done - lg.t0), flush=True)
            print("lost=%d dup=%d (sent %d, received %d, recovery %.1f s from restart to all data written; "
                  "spool fsync: %s)" % (lost, a["dup"], expected, a["unique"], recovery, FSYNC), flush=True)
            check(lost == 0 and a["dup"] == 0, "lost=%d dup=%d" % (lost, a["dup"]))
            check(a["bad"] == 0, "%d lines do not parse (torn line not cut?)" % a["bad"])
            check(not a["not_dense"], "segments not dense from 0: %r" % a["not_dense"][:3])
            check(replay and int(replay[0][0]) > 0, "the restart replayed nothing from the spool:\n%s" % logs[-3000:])
            check(found, "the file exporter did not read back what it held before replaying")
            check(sl.grep(logs, r"torn or corrupt tail.*cut off"), "the spool's torn tail was not logged")
            check(sl.grep(logs, r"cut a torn last line of \d+ bytes"), "the jsonl torn line was not logged")
            check(not sl.grep(logs, r"(?i)panic|assert|segfault|AddressSanitizer"), "the collector crashed:\n%s"
                  % logs[-3000:])
            log("torn tails cut and logged; %s replayed records, %s lines found at restart"
                % (replay[0][0], found[0]))
        finally:
            if lg:
                lg.stop()
            col.stop(30)


if __name__ == "__main__":
    sl.oaplib.run_test(main)
