#!/usr/bin/env python3
"""Collector throughput benchmark (issue 2).

In one run, with the same loadgen and the same encoded batches:
  raw      loadgen -> canopy-rawsink (nng REQ/REP, reply without decoding)
  discard  loadgen -> canopy: nng -> merge_by_task -> discard (live call trees off)
  agg      the same with merge_by_task's live call trees on (issue 6's aggregate)
  jsonl    loadgen -> canopy: nng -> merge_by_task -> file (jsonl), written to the
           work directory (a tmpfs by default: --work-dir to change)
Prints snapshots/s, the ratio to the raw transport and the collector's peak
RSS (VmHWM), as a Markdown table.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CONFIG = """
receivers:
  nng:
    listen: [{url}]
    contexts: 16
processors:
  merge_by_task:
    flush_interval: 1s
    aggregate: {{enabled: {aggregate}}}
exporters:
{exporter}
service:
  shutdown_timeout: 5m
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [{exporter_id}]
"""


def peak_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for(path, proc, what, timeout=10):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit("%s did not start" % what)
        time.sleep(0.02)


def run_loadgen(args, url):
    cmd = [os.path.join(args.bin, "canopy-loadgen"), "--url", url, "--agents", str(args.agents),
           "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--depth", str(args.depth),
           "--tasks", str(args.tasks), "--quiet", "--timeout", "300"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in (kv.split("=") for kv in last.split())}


def bench_raw(args, work):
    url = "ipc://%s/raw.sock" % work
    sink = subprocess.Popen([os.path.join(args.bin, "canopy-rawsink"), "--url", url, "--contexts", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(url[6:], sink, "canopy-rawsink")
    try:
        res = run_loadgen(args, url)
    finally:
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
    return res, 0


def bench_collector(args, work, name, exporter, exporter_id, aggregate=False):
    url = "ipc://%s/%s.sock" % (work, name)
    cfg = os.path.join(work, name + ".yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(url=url, exporter=exporter, exporter_id=exporter_id,
                              aggregate="true" if aggregate else "false"))
    log = open(os.path.join(work, name + ".log"), "w")
    col = subprocess.Popen([os.path.join(args.bin, "canopy"), "run", "-c", cfg, "--log-level", "warn"],
                           stdout=log, stderr=log)
    wait_for(url[6:], col, "canopy")
    try:
        res = run_loadgen(args, url)
        rss = peak_rss_kib(col.pid)
    finally:
        col.send_signal(signal.SIGTERM)
        col.wait(300)
    return res, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument("--work-dir", default="/dev/shm",
                    help="where sockets and jsonl output go; a tmpfs measures canopy, not the disk")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="canopy-bench-", dir=args.work_dir if os.path.isdir(args.work_dir) else None)
    cases = [
        ("raw nng REQ/REP (rawsink, no decode)", lambda: bench_raw(args, work)),
        ("canopy: nng -> merge_by_task -> discard",
         lambda: bench_collector(args, work, "discard", "  discard:\n", "discard")),
        ("canopy: same, with the live call trees (aggregate) on",
         lambda: bench_collector(args, work, "discard_agg", "  discard:\n", "discard", aggregate=True)),
        ("canopy: nng -> merge_by_task -> file (jsonl)",
         lambda: bench_collector(args, work, "jsonl",
                                 "  file:\n    directory: %s/out\n    fsync: never\n" % work, "file")),
    ]
    results = []
    for name, fn in cases:
        runs = []
        for r in range(args.rounds):
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            res, rss = fn()
            runs.append((res["rate"], rss, res))
            print("  %s: round %d: %.0f snapshots/s, peak RSS %.1f MiB" % (name, r + 1, res["rate"], rss / 1024),
                  file=sys.stderr)
        runs.sort(key=lambda x: x[0])
        results.append((name, runs[len(runs) // 2]))
    raw = results[0][1][0]
    snapshots = int(results[0][1][2]["snapshots"])
    print("\nWorkload: %d agents x %d batches x %d snapshots, depth %d, %d tasks (%d snapshots per run), "
          "median of %d runs\n" % (args.agents, args.batches, args.batch_size, args.depth, args.tasks, snapshots,
                                   args.rounds))
    print("| case | snapshots/s | vs raw transport | collector peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    for name, (rate, rss, _) in results:
        print("| %s | %s | %.0f%% | %s |" % (name, "{:,.0f}".format(rate), 100.0 * rate / raw,
                                             "%.1f MiB" % (rss / 1024) if rss else "-"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
