#!/usr/bin/python3
"""Reproduction: with a spool on, the live call trees (admin API, /ui, the
flame graphs) counted every snapshot twice.

The spooled exporter runs each batch read back from its spool through a
private copy of the pipeline's processors (core/exporter_spool.c,
cn_processor_clone). merge_by_task used to feed a process-wide profile
store from both copies. The call trees now belong to the live exporter,
which sees each chunk of its pipeline once, whatever the file exporter's
spool does.

Exit 0 when the live store counts each snapshot once."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with sl.oaplib.Workdir("chaos-repro-aggregate") as wd:
        out = os.path.join(wd, "out")
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {"file": sl.file_yaml(out) + "\n" + sl.spool_yaml(os.path.join(wd, "spool")),
                                     "live": "    max_tasks: 32"})
        col = sl.Collector(args.build_dir, wd, cfg)
        try:
            col.start(admin)
            if col.metric("canopy_profile_snapshots_total") is None:
                print("SKIP: no live call trees (canopy_profile_snapshots_total) in this build", flush=True)
                sys.exit(77)
            sl.oaplib.loadgen(args.build_dir, url, agents=1, batches=10, batch_size=64, depth=8, tasks=1,
                              timeout=30, extra=["--quiet"])
            sl.wait_for("640 lines", lambda: sl.count_lines(out) == 640, 20)
            time.sleep(0.5)
            live = col.metric("canopy_profile_snapshots_total")
            log("sent 640 snapshots; the jsonl holds %d; the live call trees counted %d"
                % (sl.count_lines(out), live))
            check(live == 640, "the live call trees counted %d snapshots for 640 sent" % live)
        finally:
            col.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
