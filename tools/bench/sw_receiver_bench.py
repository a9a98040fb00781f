#!/usr/bin/python3
"""skywalking receiver benchmark (issue 10). Prints two Markdown tables.

1. Snapshots per second into discard, one canopy with both receivers
   (nng and skywalking -> merge_by_task -> discard), the same snapshots
   (count, depth, segments, tasks) both ways, rounds interleaved:
     nng   canopy-loadgen: N agents x B acked batches of S snapshots;
     gRPC  N processes (grpcio), each B collectSnapshot streams of S
           snapshots, pre-encoded ThreadSnapshots sent as bytes, timed to
           the last reply (sent only once the snapshots are durable).
   The clients differ (C over nng, Python over gRPC) and share the 2 cores
   with canopy, so the rate mostly measures them; canopy's own CPU per
   million snapshots (user + system of the collector during the case) is
   the figure that compares the two receivers.

2. Pass-through latency per unary call: K sequential
   ConfigurationDiscoveryService/fetchConfigurations calls to the stand-in
   OAP directly, and through canopy (`upstream:`), interleaved in rounds;
   p50 and p99 of each and what canopy adds.

    /usr/bin/python3 tools/bench/sw_receiver_bench.py [--build build] [--quick]
"""
import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "oap"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from benchlib import cpu_seconds  # noqa: E402


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def thread_snapshot(task, segment, seq, t, frames):
    """A skywalking.v3.ThreadSnapshot, encoded by hand (profile.proto's field numbers)."""
    stack = b"".join(field_bytes(1, f.encode()) for f in frames)
    return (field_bytes(1, task.encode()) + field_bytes(2, segment.encode()) + varint(3 << 3) + varint(t)
            + varint(4 << 3) + varint(seq) + field_bytes(5, stack))


def frames(depth, k):
    return ["/srv/shop/mod%d.py.func%d: %d" % ((k + i) % 7, (k * 3 + i) % 11, 10 + i) for i in range(depth)]


def grpc_worker(idx, target, batches, batch_size, depth, tasks, barrier, out):
    import grpc
    ch = grpc.insecure_channel(target)
    call = ch.stream_unary("/skywalking.v3.ProfileTask/collectSnapshot")
    now = int(time.time() * 1000)
    streams = []
    for b in range(batches):
        msgs = []
        for i in range(batch_size):
            seg = "w%d-b%d-s%d" % (idx, b, i // 8)  # 8 snapshots per segment, dense from 0
            msgs.append(thread_snapshot("task-%d" % ((b + i) % tasks), seg, i % 8, now + i, frames(depth, i)))
        streams.append(msgs)
    grpc.channel_ready_future(ch).result(timeout=10)
    barrier.wait()
    t0 = time.time()
    for msgs in streams:
        call(iter(msgs))
    out.put((idx, time.time() - t0))
    ch.close()


def run_grpc(args, target):
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(args.agents + 1), ctx.Queue()
    procs = [ctx.Process(target=grpc_worker, args=(i, target, args.batches, args.batch_size, args.depth,
                                                   args.tasks, barrier, out)) for i in range(args.agents)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.time()
    for _ in procs:
        out.get(timeout=600)
    secs = time.time() - t0
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            sys.exit("a gRPC client failed (exit %r)" % p.exitcode)
    return secs


def run_nng(args, url):
    cmd = [os.path.join(args.build, "bin", "canopy-loadgen"), "--url", url, "--agents", str(args.agents),
           "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--depth", str(args.depth),
           "--tasks", str(args.tasks), "--quiet", "--timeout", "300"]
    last = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(dict(kv.split("=") for kv in last.split())["seconds"])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def latency_worker(target, calls, out):
    import grpc
    ch = grpc.insecure_channel(target)
    call = ch.unary_unary("/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations")
    req = field_bytes(1, b"shop") + field_bytes(2, b"bench-instance")
    for _ in range(20):  # warm: connection, and canopy's upstream channel
        call(req, timeout=10)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call(req, timeout=10)
        lat.append(time.perf_counter() - t0)
    ch.close()
    out.put(lat)


def run_latency(target, calls):
    # In a child: this process must not start grpc before it forks the throughput clients.
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=latency_worker, args=(target, calls, out))
    p.start()
    lat = out.get(timeout=300)
    p.join(30)
    return lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true", help="fewer rounds and snapshots (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--calls", type=int, default=2000, help="unary calls per latency case and round")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.batches, args.calls = 1, 10, 300
    args.build = os.path.abspath(args.build)
    work = tempfile.mkdtemp(prefix="canopy-swrx-bench-")
    oap = oaplib.Standin(work).start()
    grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
    url = "ipc://%s/canopy.sock" % work
    cfg = os.path.join(work, "canopy.yaml")
    with open(cfg, "w") as f:
        f.write("""receivers:
  nng:
    listen: ["%s"]
  skywalking:
    listen: "127.0.0.1:%d"
    upstream: skywalking
processors:
  merge_by_task:
exporters:
  discard:
  skywalking:
    endpoints: ["%s"]
service:
  pipelines:
    profiles:
      receivers: [nng, skywalking]
      processors: [merge_by_task]
      exporters: [discard]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
""" % (url, grpc_port, oap.target, admin_port))
    log = open(os.path.join(work, "canopy.log"), "w")
    col = subprocess.Popen([os.path.join(args.build, "bin", "canopy"), "run", "-c", cfg, "--log-level", "warn"],
                           stdout=log, stderr=log)
    n = args.agents * args.batches * args.batch_size
    rows = {"nng": [], "grpc": []}
    lat = {"direct": [], "canopy": []}
    try:
        deadline = time.time() + 20
        while not os.path.exists(url[6:]):
            if col.poll() is not None or time.time() > deadline:
                sys.exit("canopy did not start; see %s" % log.name)
            time.sleep(0.05)
        for _ in range(args.rounds):
            for case in ("nng", "grpc"):
                c0 = cpu_seconds(col.pid)
                secs = run_nng(args, url) if case == "nng" else run_grpc(args, "127.0.0.1:%d" % grpc_port)
                rows[case].append((n / secs, (cpu_seconds(col.pid) - c0) / (n / 1e6)))
            lat["direct"] += run_latency(oap.target, args.calls)
            lat["canopy"] += run_latency("127.0.0.1:%d" % grpc_port, args.calls)
    finally:
        col.send_signal(signal.SIGTERM)
        col.wait(60)
        oap.stop()

    def med(xs):
        return sorted(xs)[len(xs) // 2]
    nng_rate, nng_cpu = med([r for r, _ in rows["nng"]]), med([c for _, c in rows["nng"]])
    g_rate, g_cpu = med([r for r, _ in rows["grpc"]]), med([c for _, c in rows["grpc"]])
    print("\n%d agents x %d batches (streams) x %d snapshots, depth %d, %d tasks = %d snapshots per case; "
          "%d rounds, medians\n" % (args.agents, args.batches, args.batch_size, args.depth, args.tasks, n,
                                    args.rounds))
    print("| receiver -> merge_by_task -> discard | snapshots/s | vs nng | canopy CPU per M snapshots | vs nng |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print("| nng (canopy-loadgen, C) | {:,.0f} | 100% | {:.2f} s | 100% |".format(nng_rate, nng_cpu))
    print("| skywalking gRPC (grpcio clients) | {:,.0f} | {:.0f}% | {:.2f} s | {:.0f}% |".format(
        g_rate, 100.0 * g_rate / nng_rate, g_cpu, 100.0 * g_cpu / nng_cpu))
    d, c = lat["direct"], lat["canopy"]
    print("\n%d sequential unary calls (ConfigurationDiscoveryService/fetchConfigurations) per case and round\n"
          % args.calls)
    print("| path | p50 | p99 |")
    print("| --- | ---: | ---: |")
    print("| agent -> stand-in OAP | %.0f us | %.0f us |" % (pct(d, 50) * 1e6, pct(d, 99) * 1e6))
    print("| agent -> canopy (pass-through) -> stand-in OAP | %.0f us | %.0f us |"
          % (pct(c, 50) * 1e6, pct(c, 99) * 1e6))
    print("| added by canopy | %.0f us (x%.2f) | %.0f us (x%.2f) |"
          % ((pct(c, 50) - pct(d, 50)) * 1e6, pct(c, 50) / pct(d, 50), (pct(c, 99) - pct(d, 99)) * 1e6,
             pct(c, 99) / pct(d, 99)))


if __name__ == "__main__":
    main()
