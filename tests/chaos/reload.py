#!/usr/bin/python3
"""Config reload on SIGHUP, under load.

  1. a changed exporter: while a loadgen fleet sends, the file exporter's
     directory is changed and canopy gets SIGHUP. The old pipeline drains into
     the old directory, the new one writes to the new directory: together they
     hold every acked snapshot exactly once (0 lost, 0 duplicated), and the nng
     receiver, whose config did not change, kept every agent connection (no
     new connection accepted after the reload);
  2. a broken file: SIGHUP with a config that has an error logs it as
     FILE:LINE:COL, says the running config stays, and canopy keeps serving
     (another loadgen run is fully acked, into the new directory).

Prints `lost=0 dup=0` with the figures and fails otherwise."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def config(url, admin, out):
    return sl.config(url, admin, {"file": sl.file_yaml(out), "debug": "    interval: 1s"},
                     flush_interval="200ms", shutdown_timeout="30s")


def union_audit(dirs):
    seen, dup = set(), 0
    for d in dirs:
        a = sl.audit_jsonl(d)
        dup += a["dup"] + len(a["keys"] & seen)
        seen |= a["keys"]
    return seen, dup


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-reload") as wd:
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        out_a, out_b = os.path.join(wd, "out-a"), os.path.join(wd, "out-b")
        col = sl.Collector(args.build_dir, wd, config(url, admin, out_a))
        col.validate()
        try:
            col.start(admin)
            lg = sl.Loadgen(args.build_dir, url, agents=8, batches=400, batch_size=32, depth=12, tasks=4,
                            timeout=120, attempt_timeout=2000)
            sl.wait_for("a quarter of the batches acked", lambda: lg.acked >= lg.total_batches // 4, 60, interval=0.05)
            accepted_before = col.metric("canopy_receiver_connections_accepted_total")
            with open(col.config, "w") as f:
                f.write(config(url, admin, out_b))
            t0 = time.time()
            col.proc.send_signal(signal.SIGHUP)
            sl.wait_for("the reload", lambda: "[canopy] reloaded" in col.log(), 60, interval=0.05)
            log("reloaded in %.2f s with %d of %d batches acked" % (time.time() - t0, lg.acked, lg.total_batches))
            r = lg.result(150)
            check(r["rc"] == 0 and r["acked"] == r["sent"], "loadgen not fully acked: %r" % r)
            total = int(r["snapshots"])
            for d in (out_a, out_b):
                sl.wait_lines(d, 1, 10, 5)
            sl.wait_for("every snapshot in the files",
                        lambda: sl.count_lines(out_a) + sl.count_lines(out_b) >= total, 30, interval=0.1)
            accepted_after = col.metric("canopy_receiver_connections_accepted_total")
            seen, dup = union_audit((out_a, out_b))
            lost = total - len(seen)
            log("old directory %d lines, new directory %d lines; connections accepted %s before the reload, "
                "%s after" % (sl.count_lines(out_a), sl.count_lines(out_b), accepted_before, accepted_after))
            print("lost=%d dup=%d (sent %d snapshots; reload under load)" % (lost, dup, total), flush=True)
            check(lost == 0 and dup == 0, "lost=%d dup=%d" % (lost, dup))
            check(sl.count_lines(out_b) > 0, "nothing reached the new exporter's directory")
            check(accepted_after == accepted_before,
                  "agents had to reconnect: %s connections accepted before the reload, %s after"
                  % (accepted_before, accepted_after))

            # 2. A broken file keeps the running config.
            with open(col.config, "w") as f:
                f.write(config(url, admin, out_b).replace("  merge_by_task:\n", "  merge_by_task:\n    bogus: 1\n"))
            col.proc.send_signal(signal.SIGHUP)
            sl.wait_for("the refusal", lambda: "still running the previous one" in col.log(), 30, interval=0.05)
            where = sl.grep(col.log(), r"\[reload\] (%s:\d+:\d+): .*bogus" % col.config.replace(".", r"\."))
            check(where, "the error has no FILE:LINE:COL:\n%s" % col.log()[-1500:])
            before = sl.count_lines(out_b)
            r = sl.Loadgen(args.build_dir, url, agents=2, batches=20, batch_size=16, depth=8, tasks=2, seed=7,
                           timeout=60).result(90)
            check(r["rc"] == 0 and r["acked"] == r["sent"], "canopy stopped serving after a bad reload: %r" % r)
            sl.wait_for("the new batches in the files", lambda: sl.count_lines(out_b) >= before + r["snapshots"],
                        20, interval=0.1)
            log("broken file refused at %s; still serving (%d more snapshots written)" % (where[0], r["snapshots"]))
            check(col.stop(60) == 0, "canopy failed to stop")
        finally:
            col.stop(30)


if __name__ == "__main__":
    sl.oaplib.run_test(main)
