#!/usr/bin/python3
"""Per-switch cost of the canopy greenlet tracer, against SkyWalking's algorithm.

    /usr/bin/python3 tools/bench/agent_switch_bench.py [--build build] [--rounds 200000]
    /usr/bin/python3 tools/bench/agent_switch_bench.py --side-by-side   # 3.11 here, 3.13 in Debian 13's root

Two greenlets ping-pong (main <-> worker); every round trip is 2 switches.
The worker greenlet sits at a chosen stack depth. Cases:

  no tracer                     greenlet without any trace function
  canopy, nothing profiled      canopy's C tracer installed, registry empty
  canopy, other profiled        registry holds another greenlet (lookup misses)
  canopy profiled, depth D      the worker is profiled: 1 snapshot per switch
                                (switch-out from gr_frame, switch-in from the
                                live frames), signatures cached, handed to the
                                client library (batched, sent to a collector
                                when one runs, else dropped and counted)
  ... public frame API          the same at depth 20 with the fallback walker
                                (PyFrame_GetBack & co., CANOPY_FRAME_WALK=public)
  canopy profiled child, ...    the worker is a child greenlet of a profiled
                                greenlet (issue 12): it was first switched
                                into by a greenlet profiled at depth 10, so
                                each snapshot is 10 spawn-site frames, the
                                marker and the worker's own 20 frames
  spawn, ...                    the cost of one spawn inside a profiled
                                request at depth 20 (us per spawn, not per
                                switch): a raw greenlet.greenlet(noop).switch()
                                and a gevent.spawn(noop).join(), with children
                                followed and with CANOPY_FOLLOW_CHILDREN off;
                                "added" is over the same spawn unprofiled
  SkyWalking, depth D           SkyWalking Python's published greenlet
                                profiler: a Python trace function calling
                                traceback.extract_stack on every switch of the
                                profiled greenlet and formatting
                                "filename.func: lineno" (reimplemented here;
                                its queue put is a deque append, which flatters it)

Each case is run --repeat times interleaved; the best run counts (the
machine is shared, so the minimum is the least noisy estimate). Times are
CPU time of the switching thread. "added" is the cost over "no tracer";
"any C tracer" shows what greenlet itself spends calling a trace function.

--side-by-side runs the benchmark twice, one run after the other, against
one collector on the host: with this interpreter (Debian 12's 3.11) and with
Debian 13's 3.13 in the root of tests/py313/trixie-run (which builds the
agent for it), then prints the two columns together.
"""

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


THIS = os.path.abspath(__file__)


def setup_path(build, pythonpath=None):
    if pythonpath:
        sys.path.insert(0, pythonpath)
        return pythonpath
    for cand in (os.path.join(build, "python"), os.path.join(ROOT, build, "python")):
        if os.path.isdir(os.path.join(cand, "canopy_agent")):
            sys.path.insert(0, cand)
            return cand
    raise SystemExit("canopy_agent not found under %s/python (run make build)" % build)


def find_canopy(build):
    for cand in (os.path.join(build, "bin", "canopy"), os.path.join(ROOT, build, "bin", "canopy")):
        if os.access(cand, os.X_OK):
            return cand
    return None


# ---- the workload -------------------------------------------------------------

def make_worker(greenlet, depth, rounds_box, main=None):
    main = main or greenlet.getcurrent()

    def descend(n):
        if n > 0:
            return descend(n - 1)
        sw = main.switch
        for _ in range(rounds_box[0]):
            sw()

    # run() is frame 1; descend adds depth - 1 more
    return greenlet.greenlet(lambda: descend(depth - 1))


def time_switches(greenlet, depth, rounds, before=None, after=None):
    box = [rounds]
    g = make_worker(greenlet, depth, box)
    g.switch()  # start it: it is now parked at depth `depth`
    if before:
        before(g)
    sw = g.switch
    # CPU time of this thread, not wall time: other processes on the shared
    # cores then do not count (cache and frequency effects still do).
    # Work done on other threads (the library encoding and sending batches)
    # is not in it either; the HTTP benchmark measures the whole.
    t0 = time.thread_time_ns()
    for _ in range(rounds - 1):
        sw()
    t1 = time.thread_time_ns()
    if after:
        after(g)
    while not g.dead:
        g.switch()
    return (t1 - t0) / ((rounds - 1) * 2) / 1000.0  # microseconds per switch


def time_loop(g, rounds):
    sw = g.switch
    t0 = time.thread_time_ns()
    for _ in range(rounds - 1):
        sw()
    t1 = time.thread_time_ns()
    return (t1 - t0) / ((rounds - 1) * 2) / 1000.0


def time_child_switches(greenlet, _canopy, depth, rounds, spawn_depth=10):
    """The worker is a child: a greenlet profiled at spawn_depth does the
    first switch into it, then main ping-pongs with it as usual."""
    box = [rounds]
    main = greenlet.getcurrent()
    holder = []

    def spawner(n):
        if n > 1:
            return spawner(n - 1)
        g = make_worker(greenlet, depth, box, main)
        holder.append(g)
        g.switch()  # first switch-in from a profiled greenlet: g is its child now

    p = greenlet.greenlet(lambda: spawner(spawn_depth - 1))
    key = _canopy.begin("bench-task", "seg-child", target=p)
    p.switch()  # p spawns g; g parks at `depth` and switches back to main
    g = holder[0]
    if _canopy.stats()["children_followed"] != 1:
        raise SystemExit("agent_switch_bench: the worker was not followed as a child")
    us = time_loop(g, rounds)
    n = _canopy.end(target=key)
    while not g.dead:
        g.switch()
    return us, n


def noop():
    pass


def time_spawns(greenlet, _canopy, n, kind, profiled, depth=20):
    """us per spawn (create, run to the end, back) from a greenlet at depth."""
    import gevent

    out = []

    def body(k):
        if k > 1:
            return body(k - 1)
        if kind == "raw":
            t0 = time.thread_time_ns()
            for _ in range(n):
                greenlet.greenlet(noop).switch()
        else:
            spawn = gevent.spawn
            t0 = time.thread_time_ns()
            for _ in range(n):
                spawn(noop).join()
        out.append((time.thread_time_ns() - t0) / n / 1000.0)

    def request():
        key = _canopy.begin("bench-task", "seg-spawn") if profiled else None
        try:
            body(depth - 1)
        finally:
            if key is not None:
                _canopy.end()

    gevent.spawn(request).join()
    return out[0]


# ---- SkyWalking's algorithm (skywalking-python GreenletProfiler) ---------------

def skywalking_tracer(greenlet, profiled, max_depth=500):
    sink = collections.deque(maxlen=10000)

    def build_snapshot():
        stack_list = []
        extracted = traceback.extract_stack(profiled[0].gr_frame)
        for idx, item in enumerate(extracted):
            if idx > max_depth:
                break
            stack_list.append(f"{item.filename}.{item.name}: {item.lineno}")
        return stack_list

    def callback(event, args):
        if event in ("switch", "throw"):
            origin, target = args
            curr = profiled[0]
            if origin == curr or target == curr:
                try:
                    sink.append(build_snapshot())
                except BaseException:
                    pass

    return callback, sink


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=50000, help="round trips per run (2 switches each)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--no-collector", action="store_true", help="do not start a collector (snapshots dropped)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--pythonpath", help="import canopy_agent from here rather than BUILD/python")
    ap.add_argument("--collector-url", help="send to this running collector rather than start one")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run with this interpreter and with Debian 13's Python 3.13; print both")
    args = ap.parse_args()
    if args.side_by_side:
        return side_by_side(args)

    setup_path(args.build, args.pythonpath)
    import greenlet

    import canopy_agent
    from canopy_agent import _canopy

    collector = None
    binary = None if args.no_collector or args.collector_url else find_canopy(args.build)
    if binary:
        collector = benchlib.DiscardCollector(binary)
    url = args.collector_url or (collector.url if collector else "ipc:///tmp/canopy-bench-nobody.sock")

    rounds = args.rounds
    prof_rounds = max(rounds // 5, 2000)

    def canopy_on(follow=True):
        canopy_agent.start(collector=url, service="bench", mode="greenlet", command_poll_ms=0,
                           max_buffered_bytes=64 << 20, shutdown_timeout_ms=3000,
                           max_snapshots_per_segment=10 ** 9, follow_children=follow)

    def canopy_off():
        canopy_agent.stop()

    results = collections.defaultdict(list)

    def case_none():
        return time_switches(greenlet, 20, rounds)

    def case_floor():
        # The cheapest possible trace function (a C builtin taking 2 args):
        # what greenlet's own tracing machinery costs per switch (argument
        # tuples, enter/leave tracing, saving the error state), whoever traces.
        import operator

        prev = greenlet.settrace(operator.is_)
        try:
            return time_switches(greenlet, 20, rounds)
        finally:
            greenlet.settrace(prev)

    def case_canopy_idle():
        canopy_on()
        try:
            return time_switches(greenlet, 20, rounds)
        finally:
            canopy_off()

    def case_canopy_other():
        canopy_on()
        other = greenlet.greenlet(lambda: None)
        key = _canopy.begin("bench-task", "other-segment", target=other)
        try:
            return time_switches(greenlet, 20, rounds)
        finally:
            _canopy.end(target=key)
            canopy_off()

    def case_canopy_profiled(depth, walk="fast"):
        def run():
            canopy_on()
            _canopy.frame_walk(walk)
            keys = []
            try:
                return time_switches(
                    greenlet, depth, prof_rounds,
                    before=lambda g: keys.append(_canopy.begin("bench-task", "seg-%d" % depth, target=g)),
                    after=lambda g: keys.append(_canopy.end(target=keys[0])))
            finally:
                st = _canopy.stats()
                results["_snapshots_%d" % depth].append((st["snapshots"], keys[1] if len(keys) > 1 else None))
                canopy_off()
        return run

    def case_canopy_child(depth):
        def run():
            canopy_on()
            try:
                us, n = time_child_switches(greenlet, _canopy, depth, prof_rounds)
                results["_child_snapshots_%d" % depth].append(n)
                return us
            finally:
                canopy_off()
        return run

    spawns = max(rounds // 25, 1000)

    def case_spawn(kind, profiled, follow=True):
        def run():
            canopy_on(follow)
            try:
                return time_spawns(greenlet, _canopy, spawns, kind, profiled)
            finally:
                canopy_off()
        return run

    def case_skywalking(depth):
        def run():
            profiled = [None]
            cb, sink = skywalking_tracer(greenlet, profiled)
            prev = greenlet.settrace(cb)
            try:
                return time_switches(greenlet, depth, max(prof_rounds // 10, 1000),
                                     before=lambda g: profiled.__setitem__(0, g))
            finally:
                greenlet.settrace(prev)
                results["_sw_sample_%d" % depth] = [list(sink)[-1] if sink else None]
        return run

    cases = [
        ("no tracer", case_none),
        ("any C tracer (operator.is_)", case_floor),
        ("canopy, nothing profiled", case_canopy_idle),
        ("canopy, other greenlet profiled", case_canopy_other),
        ("canopy profiled, depth 20", case_canopy_profiled(20)),
        ("canopy profiled, depth 50", case_canopy_profiled(50)),
        ("canopy profiled, depth 20, public frame API", case_canopy_profiled(20, "public")),
        ("canopy profiled child, depth 20+11", case_canopy_child(20)),
        ("SkyWalking algorithm, depth 20", case_skywalking(20)),
        ("SkyWalking algorithm, depth 50", case_skywalking(50)),
    ]
    try:
        for _ in range(args.repeat):
            for name, fn in cases:
                results[name].append(fn())
    except BaseException:
        if collector:
            collector.stop()
        raise

    spawn_cases = [
        ("spawn raw, unprofiled", case_spawn("raw", False)),
        ("spawn raw, profiled, following", case_spawn("raw", True)),
        ("spawn raw, profiled, follow off", case_spawn("raw", True, False)),
        ("spawn gevent, unprofiled", case_spawn("gevent", False)),
        ("spawn gevent, profiled, following", case_spawn("gevent", True)),
        ("spawn gevent, profiled, follow off", case_spawn("gevent", True, False)),
    ]
    try:
        for _ in range(args.repeat):
            for name, fn in spawn_cases:
                results[name].append(fn())
    finally:
        if collector:
            collector.stop()

    best = {name: min(results[name]) for name, _ in cases + spawn_cases}
    base = best["no tracer"]
    print("greenlet switch cost (us of CPU per switch on the app thread; best of %d runs;"
          " %d-core machine, shared: expect noise)" % (args.repeat, os.cpu_count()))
    print("Python %s, greenlet %s; collector: %s" % (
        sys.version.split()[0], greenlet.__version__,
        "running (discard exporter)" if collector or args.collector_url else "none (snapshots dropped, counted)"))
    print()
    print("%-34s %10s %10s %10s" % ("case", "per switch", "added", "median"))
    for name, _ in cases:
        med = sorted(results[name])[len(results[name]) // 2]
        print("%-34s %10.3f %10.3f %10.3f" % (name, best[name], best[name] - base, med))
    print()
    print("%-34s %10s %10s %10s" % ("spawn inside a request, depth 20", "per spawn", "added", "median"))
    for name, _ in spawn_cases:
        med = sorted(results[name])[len(results[name]) // 2]
        ref = best["spawn %s, unprofiled" % name.split()[1].rstrip(",")]
        print("%-34s %10.3f %10.3f %10.3f" % (name, best[name], best[name] - ref, med))
    print()
    added_idle = best["canopy, nothing profiled"] - base
    floor = best["any C tracer (operator.is_)"] - base
    print("greenlet's own cost of calling any trace function: %.3f us; canopy's callback adds %.3f us to it"
          % (floor, added_idle - floor))
    for d in (20, 50):
        c = best["canopy profiled, depth %d" % d] - base
        s = best["SkyWalking algorithm, depth %d" % d] - base
        print("depth %d: SkyWalking's algorithm costs %.1fx canopy's added per-switch cost (%.2f vs %.2f us)"
              % (d, s / c if c > 0 else float("inf"), s, c))
    print()
    ok_idle = added_idle <= 0.15
    ok_20 = best["canopy profiled, depth 20"] - base <= 2.0
    print("target: <= 0.15 us added per switch, nothing profiled: %.3f us  %s" % (added_idle, "OK" if ok_idle else "MISSED"))
    print("target: <= 2 us per profiled switch at depth 20:      %.3f us  %s"
          % (best["canopy profiled, depth 20"] - base, "OK" if ok_20 else "MISSED"))
    child = best["canopy profiled child, depth 20+11"] - base
    print("target: <= 2 us per profiled child switch, depth 20:  %.3f us  %s (stacks of 31 frames)"
          % (child, "OK" if child <= 2.0 else "MISSED"))
    snaps = results.get("_snapshots_20")
    if snaps:
        print("(profiled depth-20 runs took %s snapshots per run; stacks are %s frames)"
              % (snaps[-1][0], 20))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "greenlet": greenlet.__version__,
                       "cases": [n for n, _ in cases + spawn_cases],
                       "best_us": best, "runs_us": {k: v for k, v in results.items() if not k.startswith("_")}},
                      f, indent=2)
    return 0


def side_by_side(args):
    """This interpreter, then Debian 13's 3.13 in its root, one collector for both."""
    binary = None if args.no_collector else find_canopy(args.build)
    collector = benchlib.DiscardCollector(binary) if binary else None
    common = ["--rounds", str(args.rounds), "--repeat", str(args.repeat)]
    common += ["--collector-url", collector.url] if collector else ["--no-collector"]
    build = os.path.join(ROOT, args.build) if not os.path.isabs(args.build) else args.build
    runs = []
    tmp = tempfile.mkdtemp(prefix="canopy-bench-", dir="/tmp")  # /tmp is bound into the root
    try:
        for label, cmd in (
                ("here", [sys.executable, THIS, "--build", build]),
                ("Debian 13", [os.path.join(ROOT, "tests", "py313", "trixie-run"), "--build", build, "--", "sh", "-c",
                               'exec chroot "$TRIXIE_ROOT" /usr/bin/python3 "$0" --pythonpath "$TRIXIE_PYTHONPATH" "$@"',
                               THIS])):
            out = os.path.join(tmp, "%d.json" % len(runs))
            print("running the benchmark %s ..." % label, file=sys.stderr, flush=True)
            done = subprocess.run(cmd + ["--json", out] + common, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                print(done.stdout, file=sys.stderr)
                raise SystemExit("agent_switch_bench: the run %s failed" % label)
            with open(out) as f:
                runs.append(json.load(f))
    finally:
        if collector:
            collector.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("greenlet switch cost, us of CPU per switch on the app thread (best of %d runs; %d-core shared machine; "
          "the two columns ran one after the other)" % (args.repeat, os.cpu_count()))
    print("collector: %s" % ("running (discard exporter)" if collector else "none (snapshots dropped, counted)"))
    print()
    head = ["%s / greenlet %s" % (r["python"], r["greenlet"]) for r in runs]
    print("%-44s %26s %26s" % ("Python / greenlet", head[0], head[1]))
    print("%-44s %13s %12s %13s %12s" % ("case", "per switch", "added", "per switch", "added"))
    for name in runs[0]["cases"]:
        cols = []
        for r in runs:
            best, base = r["best_us"].get(name), r["best_us"]["no tracer"]
            cols += ["%13.3f" % best, "%12.3f" % (best - base)] if best is not None else ["%13s" % "-", "%12s" % ""]
        print("%-44s %s %s %s %s" % (name, *cols))
    print()
    for r in runs:
        base = r["best_us"]["no tracer"]
        idle = r["best_us"]["canopy, nothing profiled"] - base
        d20 = r["best_us"]["canopy profiled, depth 20"] - base
        print("Python %s: added %.3f us nothing profiled (target <= 0.15: %s), %.3f us profiled at depth 20 "
              "(target <= 2: %s)" % (r["python"], idle, "OK" if idle <= 0.15 else "MISSED", d20,
                                     "OK" if d20 <= 2.0 else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
