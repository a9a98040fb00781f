#!/usr/bin/python3
"""SkyWalking path benchmark (issue 4). Prints two Markdown tables.

1. Throughput into the OAP (the stand-in, tests/oap/standin_oap.py), with the
   same snapshots (same count, depth and signature shape) both ways:
     canopy  canopy-loadgen (N agents) -> canopy: nng -> merge_by_task ->
             skywalking exporter -> stand-in; timed from the first batch
             until the stand-in has stored every snapshot.
     direct  N Python processes, each with its own grpcio channel, streaming
             its share straight to the stand-in, one collectSnapshot call per
             batch, as each worker would without canopy.

2. A 16-worker fleet for --window seconds, counted at the stand-in and
   scaled to one minute:
     without canopy  16 processes, each with its own channel: a
                     collectSnapshot stream per second with that second's
                     snapshots, getProfileTaskCommands every 20 s.
     with canopy     16 agents feeding canopy the same snapshots every second
                     (canopy-loadgen) and asking canopy for commands every
                     5 s (canopy-fake-agent); canopy polls the OAP per
                     instance every 20 s (tasks.skywalking) and flushes per
                     task every second.

Both sides share the machine with the stand-in, a Python gRPC server, which
bounds the absolute numbers; the ratio is the point.

    /usr/bin/python3 tools/bench/skywalking_bench.py [--build build] [--quick]
"""
import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "oap"))
import oaplib  # noqa: E402


def gen_stubs(dest):
    """The stand-in's stubs, generated in a child so this process never
    imports grpc before forking its workers (grpcio and fork do not mix)."""
    code = ("import sys; sys.path.insert(0, %r); import standin_oap, shutil; "
            "d = standin_oap.generate_stubs(standin_oap.DEFAULT_PROTO_DIR); "
            "shutil.copytree(d + '/skywalking', %r + '/skywalking')") % (os.path.dirname(oaplib.STANDIN), dest)
    subprocess.run([oaplib.PY, "-c", code], check=True)


def signatures(depth, seed):
    rnd = random.Random(seed)
    files = ["/srv/shop/%s.py" % n for n in ("views", "orders", "payment", "inventory", "db", "cache")]
    funcs = ["checkout", "reserve_inventory", "charge_payment", "render", "query", "fetch", "loads", "dumps"]
    return ["%s.%s: %d" % (rnd.choice(files), rnd.choice(funcs), rnd.randint(10, 900)) for _ in range(depth)]


def direct_worker(idx, stub_dir, target, batches, batch_size, depth, barrier, out, tasks, per_second):
    """One worker without canopy: its own channel to the OAP."""
    sys.path.insert(0, stub_dir)
    import grpc
    from skywalking.v3 import profile_pb2 as pb
    from skywalking.v3 import profile_pb2_grpc as pbg
    stack = pb.ThreadStack(codeSignatures=signatures(depth, idx))
    now = int(time.time() * 1000)
    calls, seq, seg = [], 0, 0
    for b in range(batches):
        msgs = []
        for k in range(batch_size):
            if seq == 64:  # a request of 64 snapshots ends; the next starts
                seq, seg = 0, seg + 1
            msgs.append(pb.ThreadSnapshot(taskId="task-%d" % (seg % tasks), traceSegmentId="w%d-seg-%d" % (idx, seg),
                                          time=now + seq * 10, sequence=seq, stack=stack))
            seq += 1
        calls.append(msgs)
    ch = grpc.insecure_channel(target)
    stub = pbg.ProfileTaskStub(ch)
    barrier.wait()
    t0 = time.time()
    polls = 0
    for i, msgs in enumerate(calls):
        if per_second:
            # Fleet mode: one flush per second, a command poll every 20 s.
            if i % 20 == 0:
                stub.getProfileTaskCommands(pb.ProfileTaskCommandQuery(
                    service="shop", serviceInstance="%d@bench" % idx), timeout=30)
                polls += 1
            delay = t0 + i - time.time()
            if delay > 0:
                time.sleep(delay)
        stub.collectSnapshot(iter(msgs), timeout=120)
    out.put((idx, time.time() - t0, polls))
    ch.close()


def run_direct(stub_dir, target, workers, batches, batch_size, depth, tasks, per_second=False):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=direct_worker, args=(i, stub_dir, target, batches, batch_size, depth, barrier, out,
                                                     tasks, per_second)) for i in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.time()
    for p in procs:
        p.join()
    elapsed = time.time() - t0
    results = [out.get() for _ in procs]
    return elapsed, results


def sw_config(url, admin_port, target, poll="20s"):
    exporters = {"skywalking": oaplib.sw_exporter_yaml([target], timeout="30s") + "\n"
                 + oaplib.retry_yaml(initial="100ms", max_interval="1s", max_elapsed="0s")}
    tasks = "  skywalking:\n    exporter: skywalking\n    poll_interval: %s\n" % poll
    return oaplib.canopy_config(url, admin_port, exporters, flush_interval="1s", tasks=tasks, log_level="info")


def throughput(args, wd, stub_dir):
    rows = []
    total_expected = args.agents * args.batches * args.batch_size
    # canopy
    oap = oaplib.Standin(wd, name="oap-canopy").start()
    url = "ipc://%s/canopy.sock" % wd
    admin = oaplib.free_port()
    c = oaplib.Collector(args.build, wd, sw_config(url, admin, oap.target), name="canopy-tp")
    try:
        c.start(admin)
        t0 = time.time()
        r = oaplib.loadgen(args.build, url, args.agents, args.batches, args.batch_size, args.depth, args.tasks)
        total = int(r["snapshots"])
        oaplib.wait_for("the stand-in to store %d snapshots" % total,
                        lambda: oap.stats()["snapshots_stored"] >= total, 600, interval=0.05)
        elapsed = time.time() - t0
        s = oap.stats()
        rows.append(("canopy: %d agents -> canopy -> OAP" % args.agents, total, elapsed, total / elapsed,
                     s["connections"], s["calls_ok"].get("collectSnapshot", 0)))
        ingest = r["rate"]
    finally:
        c.stop()
        oap.stop()
    # direct
    oap = oaplib.Standin(wd, name="oap-direct").start()
    try:
        elapsed, _ = run_direct(stub_dir, oap.target, args.agents, args.batches, args.batch_size, args.depth,
                                args.tasks)
        s = oap.stats()
        total = s["snapshots_stored"]
        oaplib.check(total == total_expected, "direct: stored %d of %d" % (total, total_expected))
        rows.append(("direct: %d grpcio clients -> OAP" % args.agents, total, elapsed, total / elapsed,
                     s["connections"], s["calls_ok"].get("collectSnapshot", 0)))
    finally:
        oap.stop()
    print("\n### Snapshots into the OAP (stand-in), same %d snapshots of depth %d\n" % (total_expected, args.depth))
    print("| path | snapshots | seconds | snapshots/s | OAP connections | collectSnapshot calls |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, n, sec, rate, conns, calls in rows:
        print("| %s | %d | %.2f | %.0f | %d | %d |" % (name, n, sec, rate, conns, calls))
    print("\n(canopy-loadgen's own ingest rate into canopy: %.0f snapshots/s; the stand-in is a Python server "
          "and is the bottleneck of both paths)" % ingest)
    return rows


def fleet(args, wd, stub_dir):
    W = args.window
    workers = 16
    per_worker = args.fleet_rate  # snapshots per worker per second
    rows = []
    # without canopy
    oap = oaplib.Standin(wd, name="oap-nocanopy").start()
    try:
        oap.create_task(service="shop", endpointName="/checkout", duration=10)
        run_direct(stub_dir, oap.target, workers, W, per_worker, args.depth, 2, per_second=True)
        s = oap.stats()
        rows.append(("without canopy", s["connections"], s["calls"].get("collectSnapshot", 0),
                     s["calls"].get("getProfileTaskCommands", 0)))
    finally:
        oap.stop()
    # with canopy
    oap = oaplib.Standin(wd, name="oap-canopy-fleet").start()
    url = "ipc://%s/fleet.sock" % wd
    admin = oaplib.free_port()
    c = oaplib.Collector(args.build, wd, sw_config(url, admin, oap.target), name="canopy-fleet")
    agents = []
    try:
        oap.create_task(service="shop", endpointName="/checkout", duration=10)
        c.start(admin)
        fake = os.path.join(args.build, "bin", "canopy-fake-agent")
        t0 = time.time()
        # Polls are counted over [0, W): one more falls due exactly at W.
        polls_in_window = []
        timer = threading.Timer(W - 0.5, lambda: polls_in_window.append(
            oap.stats()["calls"].get("getProfileTaskCommands", 0)))
        timer.start()
        for i in range(workers):
            agents.append(subprocess.Popen([fake, "--url", url, "--service", "shop", "--instance", "%d@bench" % i,
                                            "--polls", str(W // 5), "--interval-ms", "5000", "--snapshots", "0",
                                            "--no-finish"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for sec in range(W):
            # Each second, 16 agents each send that second's snapshots (one batch).
            oaplib.loadgen(args.build, url, workers, 1, per_worker, args.depth, 2)
            delay = t0 + sec + 1 - time.time()
            if delay > 0:
                time.sleep(delay)
        time.sleep(1.5)  # the last flush
        s = oap.stats()
        timer.join()
        rows.append(("with canopy", s["connections"], s["calls"].get("collectSnapshot", 0),
                     polls_in_window[0] if polls_in_window else s["calls"].get("getProfileTaskCommands", 0)))
    finally:
        for a in agents:
            a.kill()
            a.wait()
        c.stop()
        oap.stop()
    scale = 60.0 / W
    print("\n### A 16-worker fleet and the OAP, per minute (counted over %d s at the stand-in, x%.1f)\n"
          % (W, scale))
    print("| | OAP connections | collectSnapshot calls/min | getProfileTaskCommands calls/min | calls/min |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, conns, cs, polls in rows:
        print("| %s | %d | %.0f | %.0f | %.0f |" % (name, conns, cs * scale, polls * scale, (cs + polls) * scale))
    print("\n(%d snapshots/s per worker; workers flush every second and poll commands every 20 s, as SkyWalking "
          "agents do; canopy merges per task and flushes every second, and still polls the OAP once per instance "
          "per 20 s so that the OAP's per-instance task log stays right)" % per_worker)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--window", type=int, default=40,
                    help="seconds of the fleet run; a multiple of the 20 s poll interval counts polls exactly")
    ap.add_argument("--fleet-rate", type=int, default=50, help="snapshots/s per worker in the fleet run")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    if args.quick:
        args.batches, args.window = 4, 20
    for b in ("canopy", "canopy-loadgen", "canopy-fake-agent"):
        if not os.access(os.path.join(args.build, "bin", b), os.X_OK):
            sys.exit("skywalking_bench: %s/bin/%s is not built" % (args.build, b))
    with tempfile.TemporaryDirectory(prefix="canopy-swbench-") as wd:
        stub_dir = os.path.join(wd, "stubs")
        os.makedirs(stub_dir)
        gen_stubs(stub_dir)
        if not args.skip_throughput:
            throughput(args, wd, stub_dir)
        if not args.skip_fleet:
            fleet(args, wd, stub_dir)


if __name__ == "__main__":
    main()
