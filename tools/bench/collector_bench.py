#!/usr/bin/env python3
"""Collector throughput benchmark (issue 2).

In one run, with the same loadgen and the same encoded batches:
  raw      loadgen -> canopy-rawsink (nng REQ/REP, reply without decoding)
  discard  loadgen -> canopy: nng -> merge_by_task -> discard (no live call trees)
  live     the same plus the live exporter's call trees, as the default config has
           (a --baseline-bin build older than the live exporter gets
           merge_by_task's `aggregate` instead)
  jsonl    loadgen -> canopy: nng -> merge_by_task -> file (jsonl), written to the
           work directory (a tmpfs by default: --work-dir to change)
Every round runs each case once, in that order. Prints the median
snapshots/s, the median and range of each case's ratio to the raw transport
of the same round, and the collector's peak RSS (VmHWM, highest of the
rounds), as a Markdown table.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, peak_rss_kib

CONFIG = """
receivers:
  nng:
    listen: [{url}]
    contexts: 16
processors:
  merge_by_task:
    flush_interval: 1s
{merge_extra}exporters:
{exporter}
service:
  shutdown_timeout: 5m
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [{exporter_id}]
"""


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
        res["cpu"] = cpu_seconds(sink.pid)
    finally:
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
    return res, 0


def has_live_exporter(bin_dir):
    out = subprocess.run([os.path.join(bin_dir, "canopy"), "components"], stdout=subprocess.PIPE, text=True)
    return any(line.split()[:1] == ["live"] for line in out.stdout.splitlines())


def bench_collector(args, work, name, exporter, exporter_id, live=False, bin_dir=None):
    """live: with the live call trees; a baseline build (bin_dir) that predates
    the live exporter keeps them in merge_by_task's `aggregate` (on by default)."""
    url = "ipc://%s/%s.sock" % (work, name)
    cfg = os.path.join(work, name + ".yaml")
    merge_extra = ""
    if bin_dir and not has_live_exporter(bin_dir):
        merge_extra = "    aggregate: {enabled: %s}\n" % ("true" if live else "false")
    elif live:
        # as config/canopy.yaml has it
        exporter, exporter_id = "  live:\n    sending_queue: {queue_size: 16}\n" + exporter, "live, " + exporter_id
    with open(cfg, "w") as f:
        f.write(CONFIG.format(url=url, exporter=exporter, exporter_id=exporter_id, merge_extra=merge_extra))
    log = open(os.path.join(work, name + ".log"), "w")
    col = subprocess.Popen([os.path.join(bin_dir or args.bin, "canopy"), "run", "-c", cfg, "--log-level", "warn"],
                           stdout=log, stderr=log)
    wait_for(url[6:], col, "canopy")
    try:
        res = run_loadgen(args, url)
        rss = peak_rss_kib(col.pid)
        res["cpu"] = cpu_seconds(col.pid)
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
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every case once, interleaved; medians are reported")
    ap.add_argument("--baseline-bin", help="also run the discard case with this build's canopy (e.g. an older "
                    "commit's build/bin), interleaved, to compare")
    ap.add_argument("--cases", default="raw,discard,live,jsonl",
                    help="comma-separated cases to run (raw always runs: the ratios need it); e.g. raw,live to "
                    "iterate on the live case; --baseline-bin adds the baseline's discard and live")
    ap.add_argument("--work-dir", default="/dev/shm",
                    help="where sockets and jsonl output go; a tmpfs measures canopy, not the disk")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="canopy-bench-", dir=args.work_dir if os.path.isdir(args.work_dir) else None)
    # (key for --cases, name, run); each baseline case follows its own case
    all_cases = [
        ("raw", "raw nng REQ/REP (rawsink, no decode)", lambda: bench_raw(args, work)),
        ("discard", "canopy: nng -> merge_by_task -> discard",
         lambda: bench_collector(args, work, "discard", "  discard:\n", "discard")),
        ("live", "canopy: same, with the live call trees (default config)",
         lambda: bench_collector(args, work, "discard_live", "  discard:\n", "discard", live=True)),
        ("jsonl", "canopy: nng -> merge_by_task -> file (jsonl)",
         lambda: bench_collector(args, work, "jsonl",
                                 "  file:\n    directory: %s/out\n    fsync: never\n" % work, "file")),
    ]
    if args.baseline_bin:
        all_cases.insert(2, ("discard", "baseline (%s): nng -> merge_by_task -> discard" % args.baseline_bin,
                             lambda: bench_collector(args, work, "baseline", "  discard:\n", "discard",
                                                     bin_dir=args.baseline_bin)))
        all_cases.insert(4, ("live", "baseline (%s): same, with the live call trees (default config)"
                             % args.baseline_bin,
                             lambda: bench_collector(args, work, "baseline_live", "  discard:\n", "discard",
                                                     live=True, bin_dir=args.baseline_bin)))
    wanted = set(args.cases.split(",")) | {"raw"}
    unknown = wanted - {key for key, _, _ in all_cases}
    if unknown:
        sys.exit("unknown case(s): %s" % ", ".join(sorted(unknown)))
    cases = [(name, fn) for key, name, fn in all_cases if key in wanted]
    # Cases interleave round by round, and each case's ratio to raw is taken
    # within its round: on a shared machine the load drifts over minutes, and
    # pairing keeps that drift out of the ratio.
    runs = {name: [] for name, _ in cases}
    for r in range(args.rounds):
        raw_rate = None
        for name, fn in cases:
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            res, rss = fn()
            if raw_rate is None:
                raw_rate = res["rate"]
            runs[name].append((res["rate"], rss, res["rate"] / raw_rate, res))
            print("  round %d/%d: %s: %.0f snapshots/s (%.0f%% of raw), peak RSS %.1f MiB"
                  % (r + 1, args.rounds, name, res["rate"], 100.0 * res["rate"] / raw_rate, rss / 1024),
                  file=sys.stderr)
    snapshots = int(runs[cases[0][0]][0][3]["snapshots"])
    print("\nWorkload: %d agents x %d batches x %d snapshots, depth %d, %d tasks (%d snapshots per run), "
          "%d rounds, cases interleaved; medians, and the range of the per-round ratios\n"
          % (args.agents, args.batches, args.batch_size, args.depth, args.tasks, snapshots, args.rounds))
    print("| case | snapshots/s | vs raw transport (same round) | range | server CPU per M snapshots | "
          "peak RSS (median, max) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, _ in cases:
        rates = sorted(x[0] for x in runs[name])
        ratios = sorted(x[2] for x in runs[name])
        rss = sorted(x[1] for x in runs[name])
        cpu = statistics.median(x[3]["cpu"] / x[3]["snapshots"] * 1e6 for x in runs[name])
        print("| %s | %s | %.0f%% | %.0f–%.0f%% | %.2f s | %s |"
              % (name, "{:,.0f}".format(statistics.median(rates)), 100.0 * statistics.median(ratios),
                 100.0 * ratios[0], 100.0 * ratios[-1], cpu,
                 "%.1f, %.1f MiB" % (statistics.median(rss) / 1024, rss[-1] / 1024) if rss[-1] else "-"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
