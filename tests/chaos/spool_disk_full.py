#!/usr/bin/python3
"""The disk under the spool fills up: a 16 MiB tmpfs holds the spool, and a
filler file (dd) takes every free byte. Both full-spool policies:

when_full: block
  the exporter is healthy and caught up (one spool segment left); once the
  disk is full every append fails with ENOSPC: the collector logs it, agents
  get retryable refusals and keep their batches (nothing acked, nothing
  lost); the filler is deleted and every batch arrives, exactly once.

when_full: drop_oldest
  the exporter is stalled (its output files cannot be opened), so the spool
  holds several segments; once the disk is full, appends delete the oldest
  segment to make room: the drop is logged and counted
  (canopy_spool_dropped_snapshots_total, read from /metrics when the admin
  API serves it, else from the log), the batches are acked; segments go
  oldest first; then space returns, the exporter recovers, and every batch
  sent after that arrives. What is missing from the files must be covered by the counted
  drops: nothing is lost silently.

The tmpfs is mounted here (root needed; skipped otherwise) and unmounted in
a finally."""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

TASKS = 4
BATCH_SIZE = 64
ENOSPC_LOG = r"spool .*: write failed: No space left on device; refusing batches"
DROP_LOG = r"dropped its oldest (\d+) records \((\d+) snapshots\) per when_full: drop_oldest"


def collector(args, wd, name, disk, when_full, segment_size):
    out = os.path.join(wd, name + "-out")
    spool = os.path.join(disk.path, "spool")
    url = "ipc://%s/%s.sock" % (wd, name)
    admin = sl.free_port()
    cfg = sl.config(url, admin, {
        "file": sl.file_yaml(out) + "\n" + sl.oaplib.retry_yaml(initial="100ms", max_interval="500ms",
                                                                  max_elapsed="0s")
        + "\n" + sl.spool_yaml(spool, fsync="interval", when_full=when_full, segment_size=segment_size),
    }, flush_interval="200ms", shutdown_timeout="20s")
    col = sl.Collector(args.build_dir, wd, cfg, name=name)
    col.validate()
    col.start(admin)
    return col, url, out, spool


def load(args, url, batches, seed, agents=4, timeout=60, service="loadgen"):
    return sl.Loadgen(args.build_dir, url, agents=agents, batches=batches, batch_size=BATCH_SIZE, depth=20,
                      tasks=TASKS, timeout=timeout, attempt_timeout=1000, seed=seed, service=service)


def finish(lg, what, timeout=90):
    r = lg.result(timeout)
    check(r["rc"] == 0 and r["acked"] == r["sent"] == lg.total_batches, "%s: not fully acked: %r" % (what, r))
    return int(r["snapshots"])


def block(args, wd):
    with sl.Tmpfs(os.path.join(wd, "disk-block"), "16m") as disk:
        col, url, out, spool = collector(args, wd, "block", disk, "block", "256KiB")
        lg = None
        try:
            sent = finish(load(args, url, 40, seed=1), "before the disk filled")
            n, _ = sl.wait_lines(out, sent, 30, 10)
            check(n == sent, "before the disk filled: %d of %d lines" % (n, sent))
            sl.wait_for("the spool to shrink to its open segment", lambda: len(sl.spool_files(spool)) == 1, 20)
            filler = disk.fill()
            log("block: %d snapshots delivered; filler of %d bytes leaves %d bytes free"
                % (sent, filler, disk.free_bytes()))

            lg = load(args, url, 40, seed=2, timeout=80)
            t0 = time.time()
            # The spool rate-limits its log lines together (one per 10 s): when the
            # cursor save hits ENOSPC first, the refusal line comes up to 10 s later.
            sl.wait_for("the collector to log the failed spool write", lambda: sl.grep(col.log(), ENOSPC_LOG), 15)
            time.sleep(max(0.0, 6 - (time.time() - t0)))
            logs = col.log()
            acked_full = lg.acked
            check(lg.running(), "the loadgen finished while the disk was full")
            check(acked_full == 0, "batches acked while the spool could not be written: %d" % acked_full)
            check(sl.grep(logs, ENOSPC_LOG), "no log line about the failed spool write:\n%s" % logs[-2000:])
            check(lg.resent > 0, "agents did not resend refused batches")
            log("block: disk full for %.1f s: 0 of %d batches acked, %d resends, the collector logged: %s"
                % (time.time() - t0, lg.total_batches, lg.resent, sl.grep(logs, r"spool .*: write failed: [^;]*")[0]))

            os.unlink(os.path.join(disk.path, "filler"))
            t_space = time.time()
            sent += finish(lg, "after space returned")
            lg = None
            t_acked = time.time()
            n, t_all = sl.wait_lines(out, sent, 30, 10)
            refused = col.metric("canopy_spool_full_refusals_total")
            errors = col.metric("canopy_spool_write_errors_total")
            rc = col.stop(60)
            check(rc == 0, "canopy exited with %s" % rc)
            a = sl.audit_jsonl(out)
            print(sl.report_line(policy="block", sent=sent, received=a["unique"], lost=sent - a["unique"],
                                 dup=a["dup"], refusals_metric=int(refused) if refused is not None else "n/a",
                                 write_errors_metric=int(errors) if errors is not None else "n/a",
                                 acked_after_space_s=t_acked - t_space, all_written_after_space_s=t_all - t_space),
                  flush=True)
            if refused is not None:
                check(refused > 0 and errors > 0, "block: refusals/write errors not counted (%r, %r)"
                      % (refused, errors))
            check(a["unique"] == sent and a["dup"] == 0 and not a["not_dense"],
                  "block: %d unique of %d, %d duplicates, %d segments with gaps"
                  % (a["unique"], sent, a["dup"], len(a["not_dense"])))
            return sent, a, t_all - t_space
        finally:
            if lg:
                lg.stop()
            col.stop(30)


def wait_intake_drained(spool, timeout=20):
    """Waits until the intake holds no more than its segment being written."""
    intake = os.path.join(spool, "intake")
    deadline = time.time() + timeout
    while len(sl.spool_files(intake)) > 1:
        check(time.time() < deadline, "the intake still holds %d segments after %ds"
              % (len(sl.spool_files(intake)), timeout))
        time.sleep(0.1)


def drop_oldest(args, wd):
    with sl.Tmpfs(os.path.join(wd, "disk-drop"), "16m") as disk:
        out = os.path.join(wd, "drop-out")
        # Stall the exporter: its files cannot be opened while these are directories.
        stalls = [os.path.join(out, "task-%d.jsonl" % i) for i in range(TASKS)]
        for d in stalls:
            os.makedirs(d)
        col, url, out, spool = collector(args, wd, "drop", disk, "drop_oldest", "256KiB")
        try:
            # A first small load gets the exporter stuck retrying its first chunk;
            # the next one waits, unread, in the spool.
            sent = {}
            sent["a0"] = finish(load(args, url, 5, seed=11, service="a0"), "first load")
            time.sleep(1)
            sent["a"] = finish(load(args, url, 150, seed=12, service="a"), "load before the disk filled")
            # Acked means durable in the pipeline's intake (spool/intake), which frees its
            # segments only once merge_by_task has flushed them into this spool. Filling
            # the disk before then would leave that room free again a moment later, and the
            # full-disk load below would not need to drop anything.
            wait_intake_drained(spool)
            spool_before = sl.spool_bytes(spool)
            firsts_before = sl.segment_firsts(spool)
            check(len(firsts_before) >= 3, "expected several spool segments, found %d" % len(firsts_before))
            filler = disk.fill()
            log("drop_oldest: exporter stalled, %d snapshots (%d bytes, %d segments) in the spool; filler of %d "
                "bytes leaves %d bytes free" % (sent["a0"] + sent["a"], spool_before, len(firsts_before), filler,
                                                disk.free_bytes()))

            # The disk is full: appends drop the oldest segments to make room; batches are acked.
            sent["b"] = finish(load(args, url, 50, seed=13, service="b"), "load on a full disk")
            firsts_after = sl.segment_firsts(spool)
            union = sorted(set(firsts_before) | set(firsts_after))
            dropped_records = sum(union[union.index(f) + 1] - f for f in firsts_before if f not in firsts_after)
            logs = col.log()
            drops = sl.grep(logs, DROP_LOG)
            check(drops, "no drop logged on a full disk:\n%s" % logs[-2000:])
            log("drop_oldest: %d batches acked on the full disk; %d segments (%d records) deleted from the spool; "
                "logged: %s" % (sent["b"] // BATCH_SIZE, len(set(firsts_before) - set(firsts_after)), dropped_records,
                                ", ".join("%s records (%s snapshots)" % d for d in drops)))

            # Space returns, the exporter recovers.
            os.unlink(os.path.join(disk.path, "filler"))
            for d in stalls:
                shutil.rmtree(d)
            t_space = time.time()
            sent["c"] = finish(load(args, url, 40, seed=14, service="c"), "load after space returned")
            total = sum(sent.values())
            n, t_all = sl.wait_lines(out, total, 40, 8)
            metric = col.metric("canopy_spool_dropped_snapshots_total")
            rc = col.stop(60)
            check(rc == 0, "canopy exited with %s" % rc)
            a = sl.audit_jsonl(out)
            got = a["by_service"]
            lost = total - a["unique"]
            print(sl.report_line(policy="drop_oldest", sent=total, received=a["unique"], lost=lost, dup=a["dup"],
                                 dropped_records=dropped_records,
                                 dropped_metric=int(metric) if metric is not None else "n/a",
                                 dropped_logged=sum(int(x) for _, x in drops), drop_log_lines=len(drops),
                                 all_written_after_space_s=t_all - t_space), flush=True)
            log("per load: sent %s, received %s" % (sent, {k: got.get(k, 0) for k in sent}))
            check(a["dup"] == 0, "drop_oldest: %d duplicates" % a["dup"])
            check(dropped_records > 0, "drop_oldest: no segment was dropped")
            # A spool record is a chunk the processors emitted (many batches merged by task), so
            # what the deleted segments held is known only from the spool's own count.
            check(metric is not None, "canopy_spool_dropped_snapshots_total was not served")
            check(got.get("c", 0) == sent["c"],
                  "batches acked after space returned did not all arrive: sent %s, received %s" % (sent, got))
            # The intake shares the full disk with this spool: the room a drop frees may be
            # taken by the intake's own records before this spool's next append, which then
            # drops again. So batches acked on the full disk may be dropped too, but only
            # oldest first: never while a segment from before the disk filled is left.
            if got.get("b", 0) != sent["b"]:
                kept = sorted(set(firsts_before) & set(firsts_after))
                check(not kept, "drop_oldest: %d snapshots acked on the full disk were dropped while %d older "
                      "segments were kept (%s)" % (sent["b"] - got.get("b", 0), len(kept), kept))
                log("note: %d of %d snapshots acked on the full disk were dropped too, after every older segment "
                    "(the intake's records took the room the first drops made)" % (sent["b"] - got.get("b", 0),
                                                                                 sent["b"]))
            check(lost <= metric, "%d snapshots lost, only %d counted as dropped" % (lost, metric))
            if metric != lost:
                log("note: canopy_spool_dropped_snapshots_total=%d but %d snapshots are missing: records the "
                    "exporter had already read are delivered anyway" % (metric, lost))
            return sent, a, lost, metric
        finally:
            col.stop(30)


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    if os.geteuid() != 0:
        print("SKIP: mounting a tmpfs needs root", flush=True)
        sys.exit(77)
    with sl.oaplib.Workdir("chaos-disk-full") as wd:
        block(args, wd)
        drop_oldest(args, wd)


if __name__ == "__main__":
    sl.oaplib.run_test(main)
