#!/usr/bin/python3
"""Cost of the persistent spool (issue 5).

In one run, with the same loadgen workload:
  spool off         loadgen -> canopy: nng -> merge_by_task -> discard
  fsync: never      ... -> discard with a spool, left to the OS
  fsync: interval   ... -> discard with a spool, fsynced every 200 ms (default)
  fsync: always     ... -> discard with a spool, fsynced before every ack

For each case it reports the intake rate (the loadgen's: every batch acked,
i.e. in the pipeline, or on disk in the spool), the end-to-end rate (until the
discard exporter has counted every snapshot, read from /metrics) and the ratio
of both to spool off, plus the collector's peak RSS and the spool's size.
Prints a Markdown table. With --strace, the fsync: always case runs once more
under `strace -c -f` to show where the collector's time goes.

A VM's virtual disk often acknowledges a flush at once, which hides what
fsync costs on a real disk. --flush-latency-ms N adds two more cases, fsync:
interval and fsync: always with every fsync/fdatasync of the collector made N
ms slower by an LD_PRELOAD shim (compiled here with cc), which models a disk
whose cache flush takes N ms (a SATA SSD without power-loss protection: 1-5
ms; a spinning disk: 5-15 ms).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import free_port, peak_rss_kib

CONFIG = """
receivers:
  nng:
    listen: [{url}]
    contexts: 16
processors:
  merge_by_task:
    flush_interval: 1s
exporters:
  discard:
{spool}
service:
  shutdown_timeout: 5m
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [discard]
  telemetry:
    logs:
      level: warn
    http:
      listen: "127.0.0.1:{admin}"
"""

SPOOL = """    spool:
      directory: {dir}
      fsync: {fsync}
"""


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static long lag_ns = -1;
static void lag(void)
{
    if (lag_ns < 0) {
        const char *e = getenv("CN_BENCH_FLUSH_US");
        lag_ns = e ? atol(e) * 1000 : 0;
    }
    struct timespec t = {lag_ns / 1000000000, lag_ns % 1000000000};
    nanosleep(&t, NULL);
}
int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    lag();
    return real(fd);
}
int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    lag();
    return real(fd);
}
"""


def build_shim(work):
    src = os.path.join(work, "slowflush.c")
    lib = os.path.join(work, "slowflush.so")
    with open(src, "w") as f:
        f.write(SHIM)
    r = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", lib, src, "-ldl"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("cannot build the flush-latency shim:\n" + r.stderr)
    return lib


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for n in files:
            try:
                total += os.path.getsize(os.path.join(root, n))
            except OSError:
                pass
    return total


def metric(admin, name):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


class Run:
    """One collector on one config, and one loadgen against it."""

    def __init__(self, args, work, name, fsync, env=None):
        self.args, self.work, self.name = args, work, name
        self.env = env
        self.url = "ipc://%s/%s.sock" % (work, name)
        self.admin = free_port()
        self.spool_dir = os.path.join(work, "spool-" + name)
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        spool = SPOOL.format(dir=self.spool_dir, fsync=fsync) if fsync else ""
        self.cfg = os.path.join(work, name + ".yaml")
        with open(self.cfg, "w") as f:
            f.write(CONFIG.format(url=self.url, spool=spool, admin=self.admin))

    def start(self):
        self.log = open(os.path.join(self.work, self.name + ".log"), "w")
        env = dict(os.environ, **self.env) if self.env else None
        self.col = subprocess.Popen([os.path.join(self.args.bin, "canopy"), "run", "-c", self.cfg],
                                    stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 20
        while metric(self.admin, "canopy_discard_snapshots_total") is None:
            if self.col.poll() is not None or time.time() > deadline:
                sys.exit("canopy did not start; see %s" % self.log.name)
            time.sleep(0.05)

    def loadgen(self):
        a = self.args
        cmd = [os.path.join(a.bin, "canopy-loadgen"), "--url", self.url, "--agents", str(a.agents),
               "--batches", str(a.batches), "--batch-size", str(a.batch_size), "--depth", str(a.depth),
               "--tasks", str(a.tasks), "--timeout", "600"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = [None]

        def watch():
            for line in p.stderr:
                if started[0] is None and "started" in line:
                    started[0] = time.time()
        th = threading.Thread(target=watch, daemon=True)
        th.start()
        out = p.stdout.read()
        p.wait()
        th.join(5)
        if p.returncode != 0:
            sys.exit("canopy-loadgen failed (%d): %s" % (p.returncode, out[-500:]))
        last = out.strip().splitlines()[-1]
        res = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
        res["t_start"] = started[0] or (time.time() - res["seconds"])
        return res

    def measure(self):
        """Intake rate, end-to-end rate, peak RSS, spool bytes after intake."""
        self.start()
        try:
            res = self.loadgen()
            spooled = dir_bytes(self.spool_dir)
            total = res["snapshots"]
            deadline = time.time() + 600
            while (metric(self.admin, "canopy_discard_snapshots_total") or 0) < total:
                if time.time() > deadline:
                    sys.exit("%s: the discard exporter did not get every snapshot" % self.name)
                time.sleep(0.02)
            e2e = total / (time.time() - res["t_start"])
            rss = peak_rss_kib(self.col.pid)
        finally:
            self.stop()
        return {"intake": res["rate"], "e2e": e2e, "rss": rss, "spooled": spooled, "snapshots": total}

    def stop(self):
        if self.col.poll() is None:
            self.col.send_signal(signal.SIGTERM)
            self.col.wait(300)
        self.log.close()
        shutil.rmtree(self.spool_dir, ignore_errors=True)


def strace_always(args, work):
    """fsync: always once more, with strace -c -f attached to the collector."""
    if not shutil.which("strace"):
        return None
    r = Run(args, work, "strace-always", "always")
    r.start()
    out = os.path.join(work, "strace.txt")
    st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(r.col.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        res = r.loadgen()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
        r.stop()
    with open(out) as f:
        return res, f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument("--strace", action="store_true", help="also run fsync: always under strace -c")
    ap.add_argument("--flush-latency-ms", type=float, default=0,
                    help="also run interval and always with every fsync made this much slower (LD_PRELOAD shim)")
    ap.add_argument("--cases", default="never,interval,always",
                    help="comma-separated fsync policies to run (spool off always runs: it is the baseline); "
                         "the --flush-latency-ms cases follow the same list, e.g. --cases always for a short run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in ("never", "interval", "always")]
    if unknown:
        ap.error("unknown case(s) in --cases: %s" % ", ".join(unknown))
    work = tempfile.mkdtemp(prefix="canopy-spool-bench-")
    cases = [("spool off", None, None)]
    labels = {"never": "spool, fsync: never", "interval": "spool, fsync: interval (200 ms)",
              "always": "spool, fsync: always"}
    cases += [(labels[fs], fs, None) for fs in ("never", "interval", "always") if fs in wanted]
    if args.flush_latency_ms:
        env = {"LD_PRELOAD": build_shim(work), "CN_BENCH_FLUSH_US": str(int(args.flush_latency_ms * 1000))}
        for fs in ("interval", "always"):
            if fs in wanted:
                cases.append(("spool, fsync: %s, %g ms per flush" % (fs, args.flush_latency_ms), fs, env))
    results = []
    try:
        for label, fsync, env in cases:
            runs = []
            for i in range(args.rounds):
                m = Run(args, work, fsync or "off", fsync, env).measure()
                runs.append(m)
                print("  %s: round %d: intake %.0f/s, end to end %.0f/s, peak RSS %.1f MiB, spooled %.1f MiB"
                      % (label, i + 1, m["intake"], m["e2e"], m["rss"] / 1024, m["spooled"] / 2**20),
                      file=sys.stderr, flush=True)
            runs.sort(key=lambda x: x["intake"])
            med = dict(runs[len(runs) // 2])
            med["e2e"] = sorted(x["e2e"] for x in runs)[len(runs) // 2]
            results.append((label, fsync, med))
        base = results[0][2]
        print("\nWorkload: %d agents x %d batches x %d snapshots, depth %d, %d tasks (%d snapshots per run), "
              "median of %d runs; spool on %s\n" % (args.agents, args.batches, args.batch_size, args.depth,
                                                     args.tasks, base["snapshots"], args.rounds,
                                                     os.path.dirname(work) or "/"))
        print("| case | intake snapshots/s | vs spool off | end-to-end snapshots/s | vs spool off "
              "| spool after intake | peak RSS |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, fsync, m in results:
            print("| %s | %s | %.0f%% | %s | %.0f%% | %s | %.1f MiB |" % (
                label, "{:,.0f}".format(m["intake"]), 100.0 * m["intake"] / base["intake"],
                "{:,.0f}".format(m["e2e"]), 100.0 * m["e2e"] / base["e2e"],
                "%.1f MiB" % (m["spooled"] / 2**20) if fsync else "-", m["rss"] / 1024))
        interval = next((m for _, f, m in results if f == "interval"), None)
        if interval:
            ratio = interval["intake"] / base["intake"]
            print("\nfsync: interval keeps %.0f%% of the spool-off intake (target: at least 50%%)." % (100 * ratio))
        if args.strace:
            got = strace_always(args, work)
            if got:
                res, text = got
                print("\nfsync: always under `strace -c -f` (%.0f snapshots/s with strace attached):\n" % res["rate"])
                print("```")
                lines = text.strip().splitlines()
                print("\n".join(lines[:12]))
                print("```")
        if args.json:
            with open(args.json, "w") as f:
                json.dump([{"case": l, "fsync": fs, **m} for l, fs, m in results], f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
