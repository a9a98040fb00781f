#!/usr/bin/python3
"""CPU of the pyroscope exporter per million snapshots at 1,000 tasks x 10 endpoints,
against the live profiles exporter alone, in the same run (issue 15).

    /usr/bin/python3 tools/bench/pyroscope_bench.py [--bin build/bin] [--rounds 3] [--batches 50]

Load: canopy-loadgen for 10 services (svc-0..svc-9) at once, each --agents 2,
snapshots spread over 1,000 task ids (task-0..task-999, each registered in
tasks.static with one of 10 endpoints, /ep-0../ep-9). The pyroscope exporter
keys a profile on (task, service, endpoint, mode, interval), so each interval
holds 10,000 profiles: 1,000 tasks x 10 endpoint series. Every snapshot is
received, merged and exported; a run ends when the exporters under test have
taken all of them (live: its sent counter; pyroscope: every snapshot in an
accepted push, the intervals closed), and the collector's CPU time
(user + system, /proc) is read then.

Cases, interleaved round by round (medians reported):
  discard          nng -> merge_by_task -> discard: the pipeline without profiles
  live             ... -> live (the admin UI's call trees, as the default config has it)
  pyroscope        ... -> pyroscope (interval 10s, delay 1s) into a local HTTP sink
  live+pyroscope   both
The sink (a separate process, not counted) answers every POST /ingest with 200 at once.
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
import urllib.request

from benchlib import cpu_seconds, free_port

SERVICES, TASKS, ENDPOINTS = 10, 1000, 10

# A keep-alive HTTP/1.1 sink: reads each request's body, answers 200, counts POSTs.
SINK = r"""
import asyncio, sys
count = [0]
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if n:
                await reader.readexactly(n)
            if head.startswith(b"GET /count"):
                body = str(count[0]).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                count[0] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

CONFIG = """receivers:
  nng:
    listen: [{url}]
    contexts: 16
processors:
  merge_by_task:
    flush_interval: 1s
exporters:
{exporters}service:
  shutdown_timeout: 1m
  memory_limit: 1GiB
  telemetry:
    http:
      listen: 127.0.0.1:{admin}
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [{ids}]
tasks:
  max_tasks: {tasks}
  static:
{static}"""

EXPORTERS = {
    # Queues and limits raised so that nothing is dropped (1,000 tasks make a chunk per task per flush):
    # the figure is the cost of taking every snapshot.
    "discard": "  discard:\n    sending_queue: {queue_size: 8192}\n",
    "live": "  live:\n    max_tasks: 2000\n    sending_queue: {queue_size: 8192}\n",
    "pyroscope": ("  pyroscope:\n    url: http://127.0.0.1:{sink}\n    interval: 10s\n    delay: 1s\n"
                  "    max_profiles: 100000\n    max_pending_bytes: 1GiB\n    sending_queue: {queue_size: 8192}\n"),
}
CASES = {"discard": ["discard"], "live": ["live"], "pyroscope": ["pyroscope"],
         "live+pyroscope": ["live", "pyroscope"]}


def metric(admin, name, component=None):
    for attempt in range(10):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=10) as r:
                text = r.read().decode()
            break
        except OSError:  # the admin API can reset a connection while the collector is saturated
            if attempt == 9:
                raise
            time.sleep(0.5)
    total = None
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            if component and 'component="%s"' % component not in line:
                continue
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def loadgen(args, url):
    procs = [subprocess.Popen([os.path.join(args.bin, "canopy-loadgen"), "--url", url, "--agents", "2",
                               "--batches", str(args.batches), "--batch-size", str(args.batch_size),
                               "--depth", str(args.depth), "--tasks", str(TASKS), "--service", "svc-%d" % s,
                               "--seed", str(s + 1), "--quiet", "--timeout", "300"],
                              stdout=subprocess.PIPE, text=True) for s in range(SERVICES)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit("canopy-loadgen failed")
        last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
        if last["sent"] != last["acked"]:
            raise SystemExit("canopy-loadgen: not every batch acked: %r" % last)
        total += int(last["snapshots"])
    return total


def run_case(args, work, case, sink_port):
    url = "ipc://%s/%s.sock" % (work, case.replace("+", "_"))
    admin = free_port()
    static = "".join("    - {id: task-%d, service: svc-0, endpoint: /ep-%d, duration: 1h}\n" % (i, i % ENDPOINTS)
                     for i in range(TASKS))
    cfg = os.path.join(work, case.replace("+", "_") + ".yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(url=url, admin=admin, tasks=TASKS + 10, static=static, ids=", ".join(CASES[case]),
                              exporters="".join(EXPORTERS[e].replace("{sink}", str(sink_port)) for e in CASES[case])))
    log = open(os.path.join(work, case.replace("+", "_") + ".log"), "w")
    col = subprocess.Popen([os.path.join(args.bin, "canopy"), "run", "-c", cfg, "--log-level", "warn"],
                           stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while not os.path.exists(url[6:]):
            if col.poll() is not None or time.time() > deadline:
                raise SystemExit("canopy did not start (%s)" % log.name)
            time.sleep(0.02)
        start_cpu = cpu_seconds(col.pid)
        total = loadgen(args, url)

        def done():
            full = metric(admin, "canopy_exporter_queue_full_snapshots_total") or 0
            if full:
                raise SystemExit("%s: %d snapshots dropped at a full sending queue (%s)" % (case, full, log.name))
            ok = True
            if "live" in CASES[case]:
                ok &= metric(admin, "canopy_exporter_sent_snapshots_total", "live") == total
            if "pyroscope" in CASES[case]:
                ok &= metric(admin, "canopy_pyroscope_pushed_snapshots_total") == total
            if case == "discard":
                ok &= metric(admin, "canopy_exporter_sent_snapshots_total", "discard") == total
            return ok
        deadline = time.time() + 900  # pushing 10,000s of profiles takes minutes on a busy 2-core VM
        while True:
            if col.poll() is not None:
                raise SystemExit("%s: canopy exited %s (%s)" % (case, col.returncode, log.name))
            try:
                if done():
                    break
            except OSError:  # the admin API busy or restarting: ask again
                pass
            if time.time() > deadline:
                raise SystemExit("%s: the exporters did not take all %d snapshots (%s)" % (case, total, log.name))
            time.sleep(0.2)
        cpu = cpu_seconds(col.pid) - start_cpu
        pushes = metric(admin, "canopy_pyroscope_pushes_total") if "pyroscope" in CASES[case] else 0
        dropped = metric(admin, "canopy_pyroscope_dropped_snapshots_total") or 0
        dropped += metric(admin, "canopy_profile_dropped_snapshots_total") or 0  # the live trees
        if dropped:
            raise SystemExit("%s: %d snapshots dropped by the exporters" % (case, dropped))
    finally:
        col.send_signal(signal.SIGTERM)
        col.wait(120)
        log.close()
    return total, cpu, pushes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=50, help="per agent (2 agents x 10 services)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=20)
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="canopy-pyrobench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)], stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    per_m = {c: [] for c in CASES}
    pushes = {c: [] for c in CASES}
    totals = []
    try:
        for _ in range(args.rounds):
            for case in CASES:
                total, cpu, n = run_case(args, work, case, sink_port)
                totals.append(total)
                per_m[case].append(cpu / total * 1e6)
                pushes[case].append(n)
                print("%s: %d snapshots, %.1f s CPU, %d pushes" % (case, total, cpu, n), file=sys.stderr, flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    med = {c: statistics.median(v) for c, v in per_m.items()}
    print("pyroscope exporter vs live profiles: collector CPU per million snapshots")
    print("(%d snapshots per run, depth %d; %d tasks x %d endpoint series = %d profiles per 10 s interval;"
          % (totals[0], args.depth, TASKS, ENDPOINTS, TASKS * ENDPOINTS))
    print(" %d rounds, cases interleaved, medians; shared 2-core machine)" % args.rounds)
    print()
    print("| case | CPU s per M snapshots (median) | range | pushes per run |")
    print("| --- | ---: | --- | ---: |")
    for c in CASES:
        print("| %s | %.2f | %.2f–%.2f | %s |" % (c, med[c], min(per_m[c]), max(per_m[c]),
                                               "%d" % statistics.median(pushes[c]) if pushes[c][0] else "–"))
    live, pyro = med["live"] - med["discard"], med["pyroscope"] - med["discard"]
    both = med["live+pyroscope"] - med["live"]
    print()
    print("live exporter alone (live - discard):          %.2f s per M" % live)
    print("pyroscope exporter alone (pyroscope - discard): %.2f s per M  = %.2f x the live exporter" % (pyro, pyro / live))
    print("pyroscope added to live (live+pyroscope - live): %.2f s per M = %.2f x the live exporter" % (both, both / live))
    return 0


if __name__ == "__main__":
    sys.exit(main())
