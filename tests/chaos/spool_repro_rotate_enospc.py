#!/usr/bin/python3
"""Reproduction: the spool stops taking batches for good after a segment
rotation fails once.

core/spool.c rotate() closes the open segment, pushes the new one and then
opens its file. When that open fails (no free inode, or ENOSPC creating the
file's directory entry), write_fd stays -1 and the new segment stays in the
list, so every later append fails with EBADF, long after the disk has room
again: agents are refused until the collector is restarted.

Deterministic: a tmpfs with few inodes holds the spool (segment_size 64KiB),
filler files take every inode, a load forces a rotation (refused, as it
should be), the filler goes, and a second load must be acked. Exit 0 when it
is."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    if os.geteuid() != 0:
        print("SKIP: mounting a tmpfs needs root", flush=True)
        sys.exit(77)
    with sl.oaplib.Workdir("chaos-repro-rotate") as wd:
        with sl.Tmpfs(os.path.join(wd, "disk"), "16m,nr_inodes=64") as disk:
            out = os.path.join(wd, "out")
            spool = os.path.join(disk.path, "spool")
            url = "ipc://%s/canopy.sock" % wd
            admin = sl.free_port()
            cfg = sl.config(url, admin, {"file": sl.file_yaml(out) + "\n" + sl.spool_yaml(spool,
                                                                                           segment_size="64KiB")})
            col = sl.Collector(args.build_dir, wd, cfg)
            try:
                col.start(admin)
                sl.oaplib.loadgen(args.build_dir, url, agents=1, batches=2, batch_size=64, depth=20, tasks=1,
                                  timeout=30, extra=["--quiet"])
                fillers = []
                while True:
                    p = os.path.join(disk.path, "f%d" % len(fillers))
                    try:
                        open(p, "w").close()
                    except OSError:
                        break
                    fillers.append(p)
                log("every inode taken (%d filler files); a load that needs a new segment" % len(fillers))
                lg = sl.Loadgen(args.build_dir, url, agents=1, batches=30, batch_size=64, depth=20, tasks=1,
                                timeout=6, attempt_timeout=1000, seed=2)
                r = lg.result(30)
                log("while full: %d of %d batches acked" % (r["acked"], lg.total_batches))
                for p in fillers:
                    os.unlink(p)
                log("inodes free again: %d" % os.statvfs(disk.path).f_favail)
                lg = sl.Loadgen(args.build_dir, url, agents=1, batches=10, batch_size=64, depth=20, tasks=1,
                                timeout=15, attempt_timeout=1000, seed=3)
                r = lg.result(40)
                errors = sl.grep(col.log(), r"write failed: ([^;]*);")
                log("after: %d of %d batches acked; write errors logged: %s" % (r["acked"], lg.total_batches,
                                                                               sorted(set(errors))))
                check(r["acked"] == lg.total_batches, "the spool still refuses batches once the disk has room "
                      "again (%s)" % ", ".join(sorted(set(errors))))
            finally:
                col.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
