#!/usr/bin/python3
"""Reproduction: a spooled exporter's delivery marks grow without bound.

core/hwm.c keeps a mark (the delivered set) for every (task, segment) the
exporter ever delivered, in a dict that nothing ever shrinks: compact()
leaves marks untouched for HWM_KEEP_MS (an hour) out of the rewritten log,
but not out of memory. Every request profiled is a new segment, so the
collector grows by a few hundred bytes per request for as long as it runs,
outside memory_limit (which counts batches only). Marks are only needed for
segments of records the cursor has not passed: a replay never reads
anything before the cursor.

Runs the same load (25,600 new segments per round) through a spooled and an
unspooled discard exporter and compares the RSS growth over the last rounds:
without a spool it levels off (merge_by_task's segment tables are bounded);
with a spool it keeps growing. Exit 0 when the spooled collector also levels
off (less than 20 MiB more over the last 4 of 10 rounds than without a spool;
with the bug it is about 30 MiB, ~310 bytes per segment)."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

ROUNDS = 10
AGENTS, BATCHES, BATCH = 8, 200, 256


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run(args, wd, spooled):
    url = "ipc://%s/%s.sock" % (wd, "spool" if spooled else "plain")
    admin = sl.free_port()
    body = sl.spool_yaml(os.path.join(wd, "spool")) if spooled else "    {}"
    cfg = sl.config(url, admin, {"discard": body}, flush_interval="200ms")
    col = sl.Collector(args.build_dir, wd, cfg, name="spool" if spooled else "plain")
    rss = []
    try:
        col.start(admin)
        for r in range(ROUNDS):
            sl.oaplib.loadgen(args.build_dir, url, AGENTS, BATCHES, BATCH, 20, 4, timeout=120,
                              extra=["--quiet", "--seed", str(r + 1)])
            want = (r + 1) * AGENTS * BATCHES * BATCH
            sl.wait_for("the discard exporter to get round %d" % (r + 1),
                        lambda: (col.metric("canopy_discard_snapshots_total") or 0) >= want, 60)
            time.sleep(0.5)
            rss.append(rss_mib(col.proc.pid))
    finally:
        col.stop(60)
    return rss


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-repro-hwm-memory") as wd:
        plain = run(args, wd, False)
        spooled = run(args, wd, True)
        segs = AGENTS * BATCHES * BATCH // 16
        log("RSS MiB after each round of %d new segments, no spool: %s" % (segs, ["%.0f" % x for x in plain]))
        log("RSS MiB after each round of %d new segments, spool:    %s" % (segs, ["%.0f" % x for x in spooled]))
        g_plain = plain[-1] - plain[-5]
        g_spool = spooled[-1] - spooled[-5]
        log("growth over the last 4 rounds: %.1f MiB without a spool, %.1f MiB with one (%.0f bytes per segment)"
            % (g_plain, g_spool, (g_spool - g_plain) * 2**20 / (4 * segs)))
        check(g_spool - g_plain < 20, "the spooled collector keeps growing: %.1f MiB more than without a spool over "
              "4 rounds" % (g_spool - g_plain))


if __name__ == "__main__":
    sl.oaplib.run_test(main)
