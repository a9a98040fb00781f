#!/usr/bin/python3
"""Reproduction: one failed fdatasync (EIO) with spool fsync: always loses
every acked batch appended after it, in the running process and again at the
next start.

core/spool.c cn_spool_append(): with fsync: always, when fdatasync fails after
writev wrote the whole record, the append returns CN_SPOOL_IO (the agent is
refused, fine) but the record's bytes stay in the segment file while the
spool's accounting (g->bytes, next_seq) does not count them. The next append
reuses the same sequence number and lands after the stray record, so the
file and the accounting disagree from there on: the reader finds the stray
record at the expected offset, then a record whose sequence does not match,
and skips the rest of the segment as damaged; at the next start the scan
cuts everything after the stray record as a "torn tail". Every batch acked
after the failure is lost.

Deterministic: an LD_PRELOAD shim (compiled here with cc) makes the
collector's 20th fdatasync fail with EIO. One agent sends 100 batches of 16
snapshots, one at a time; all are acked (the refused one is resent). Exit 0
when all 1600 snapshots reach the jsonl file, and are still all there, with
nothing cut from the spool, after a restart."""
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
static atomic_long calls;
int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *e = getenv("CN_FAIL_FDATASYNC_AT");
    if (e && atomic_fetch_add(&calls, 1) + 1 == atol(e)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
"""


def sanitizer_runtime(binary):
    """The ASan runtime the collector links (sanitizer build), or None. ASan must
    come first in the process's libraries, so it is preloaded before the shim."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "libasan" in line and "=>" in line:
            path = line.split("=>", 1)[1].split()[0]
            if os.path.exists(path):
                return path
    return None


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    if not shutil.which("cc"):
        print("SKIP: no C compiler for the fdatasync shim", flush=True)
        sys.exit(77)
    with sl.oaplib.Workdir("chaos-repro-fsync-eio") as wd:
        src, lib = os.path.join(wd, "failsync.c"), os.path.join(wd, "failsync.so")
        with open(src, "w") as f:
            f.write(SHIM)
        r = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", lib, src, "-ldl"], capture_output=True, text=True)
        check(r.returncode == 0, "cannot build the shim:\n" + r.stderr)
        out = os.path.join(wd, "out")
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {"file": sl.file_yaml(out) + "\n"
                                     + sl.spool_yaml(os.path.join(wd, "spool"), fsync="always")},
                        flush_interval="100ms")
        col = sl.Collector(args.build_dir, wd, cfg)
        old = {k: os.environ.get(k) for k in ("LD_PRELOAD", "CN_FAIL_FDATASYNC_AT")}
        try:
            asan = sanitizer_runtime(os.path.join(args.build_dir, "bin", "canopy"))
            os.environ.update(LD_PRELOAD=" ".join(p for p in (asan, lib) if p), CN_FAIL_FDATASYNC_AT="20")
            col.start(admin)
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            res = sl.oaplib.loadgen(args.build_dir, url, agents=1, batches=100, batch_size=16, depth=8, tasks=1,
                                    timeout=30, extra=["--window", "1", "--quiet"])
            check(res["acked"] == 100, "not all acked: %r" % res)
            n, _ = sl.wait_lines(out, 1600, 15, 3)
            logs = col.log()
            check(col.stop() == 0, "canopy failed to stop")
            log("one fdatasync failed (%s); %d of 1600 acked snapshots reached the file"
                % ("logged" if "Input/output error" in logs else "not logged", n))
            col.start(admin)
            time.sleep(1.5)
            check(col.stop() == 0, "canopy failed to stop")
            cut = sl.grep(col.log(), r"torn or corrupt tail record at offset \d+ \((\d+) bytes after it cut off")
            a = sl.audit_jsonl(out)
            log("after a restart: %d unique snapshots in the file, %d duplicates; the scan cut %s bytes"
                % (a["unique"], a["dup"], cut[0] if cut else 0))
            check(a["unique"] == 1600 and a["dup"] == 0, "acked snapshots lost after one failed fdatasync: %d of 1600"
                  % a["unique"])
            check(not cut, "the restart cut %s bytes of acked records from the spool" % (cut[0] if cut else 0))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            col.stop()


if __name__ == "__main__":
    sl.oaplib.run_test(main)
