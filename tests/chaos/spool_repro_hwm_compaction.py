#!/usr/bin/python3
"""Reproduction: once a spooled exporter has delivered more segments than
fit in 8 MiB of delivery log, it crawls: every exported chunk rewrites and
fsyncs the whole log.

core/hwm.c cn_hwm_commit() compacts the log when it passes HWM_COMPACT_BYTES
(8 MiB). compact() rewrites every mark touched in the last hour, so when the
live marks alone take more than 8 MiB (about 175,000 segments at ~48 bytes a
record), the compacted log is still over the threshold and the next commit
compacts again: each chunk costs a walk over every mark and an 8+ MiB write
and fdatasync. At this test's rate that is reached in one load; a busy
collector reaches it within the hour, and SIGTERM then waits on the crawl.

Deterministic: one load of 204,800 one-snapshot segments (loadgen
--segment-len 1) through nng -> merge_by_task -> discard with a spool, then a
load of 40,960 snapshots over 16 tasks (so, many chunks): how much the
collector writes until the discard exporter counted them all (/proc/PID/io)
does not depend on the machine's speed. Exit 0 when it is under 40 MiB (a
few MiB while the log is small; a 9.5 MiB log rewritten per chunk is far
more). On a slow disk the rewrites' fsyncs make the exporter crawl: on the
development VM with a byte-wise CRC, 6,592 of those 40,960 snapshots had
arrived after 40 s."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def written(pid):
    """Bytes the process passed to write(2) and friends (/proc/PID/io wchar)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-repro-hwm-compaction") as wd:
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        spool = os.path.join(wd, "spool")
        cfg = sl.config(url, admin, {"discard": sl.spool_yaml(spool)}, flush_interval="200ms",
                        merge_extra="    max_segments_per_task: 1000000\n")
        col = sl.Collector(args.build_dir, wd, cfg)
        count = lambda: col.metric("canopy_discard_snapshots_total") or 0  # noqa: E731
        try:
            col.start(admin)
            big = 8 * 100 * 256
            sl.oaplib.loadgen(args.build_dir, url, 8, 100, 256, 4, 4, timeout=120,
                              extra=["--quiet", "--segment-len", "1", "--seed", "1"])
            t0 = time.time()
            sl.wait_for("the first load delivered", lambda: count() >= big, 120, interval=0.25)
            log("%d one-snapshot segments delivered in %.1f s after the last ack; delivery log %.1f MiB"
                % (big, time.time() - t0, os.path.getsize(os.path.join(spool, "hwm.log")) / 2**20))
            small = 8 * 20 * 256
            w0 = written(col.proc.pid)
            sl.oaplib.loadgen(args.build_dir, url, 8, 20, 256, 4, 16, timeout=60,
                              extra=["--quiet", "--seed", "2", "--service", "small"])
            t1 = time.time()
            try:
                sl.wait_for("the small load delivered", lambda: count() >= big + small, 40, interval=0.1)
            except sl.TestFailure:
                pass
            took = time.time() - t1
            got = count() - big
            wrote = (written(col.proc.pid) - w0) / 2**20
            log("then %d snapshots over 16 tasks: %d delivered %.1f s after their last ack; the collector wrote "
                "%.1f MiB meanwhile" % (small, got, took, wrote))
            # The load itself is about 2 MiB of spool; a compaction per chunk writes the whole log each time.
            check(got >= small and wrote < 40, "every chunk rewrites the delivery log once it passed 8 MiB: %.0f MiB "
                  "written for %d snapshots (%d delivered in %.1f s)" % (wrote, small, got, took))
        finally:
            col.proc and col.proc.kill()
            col.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
