#!/usr/bin/python3
"""Continuous tasks (docs/pyroscope.md): a real `gunicorn -k gevent -w 2` fleet
under steady load on two endpoints, each with a continuous task (window 2 s,
max_sampling_count 2; the agent's default mode, greenlet) -> canopy (merge_by_task -> pyroscope + file) -> the
stand-in Pyroscope.

  - for as long as the load runs, every 2 s interval has exactly one push per
    endpoint, each with samples; the intervals are contiguous and their
    sample counts add up to the snapshots the collector received;
  - each worker profiles at most max_sampling_count requests per endpoint and
    window (counted from the file exporter's segments);
  - the tasks never end: the admin API says running, continuous, no time
    left, before, during and after the load, long past any end a task of
    these figures could have had."""
import collections
import os
import sys
import threading
import time
import urllib.request
import json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402

WORKERS = 2
K = 2             # max_sampling_count: per worker, endpoint and window
WINDOW_S = pyrolib.INTERVAL_S  # the window equals the push interval (both aligned on the clock)
LOAD_S = 12
ENDPOINTS = {"cont-checkout": "/checkout", "cont-search": "/search"}

# Two endpoints that both run long enough (hashing and gevent sleeps) for a profiled request to be sampled.
APP = '''
import hashlib
import gevent


def price(n):
    h = b"x"
    for _ in range(n):
        h = hashlib.sha256(h).digest()
    return h


def checkout():
    gevent.sleep(0.03)
    price(20000)


def search():
    price(10000)
    gevent.sleep(0.03)


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    if path == "/checkout":
        checkout()
    elif path == "/search":
        search()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


def tasks_yaml():
    text = "  static:\n"
    for tid, ep in ENDPOINTS.items():
        text += ('    - {id: %s, service: shop, endpoint: "%s", continuous: true, window: %ds, '
                 'max_sampling_count: %d, dump_period: 10ms}\n' % (tid, ep, WINDOW_S, K))
    return text


def task_json(canopy, tid):
    with urllib.request.urlopen(canopy.admin + "/api/v1/tasks/" + tid, timeout=5) as r:
        return json.load(r)


def check_never_ends(canopy, when):
    for tid in ENDPOINTS:
        t = task_json(canopy, tid)
        check((t["status"], t["continuous"], t["remaining_ms"], t["window_ms"]) == ("running", True, None,
                                                                                     WINDOW_S * 1000),
              "%s: task %s is %r" % (when, tid, t))


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    started = time.time()
    with oaplib.Workdir("pyroscope-continuous") as wd:
        env = oaplib.Env(args, wd)
        oaplib.CHECKOUT_APP = APP  # Fleet.start writes it as the app
        fleet = oaplib.Fleet(args.build_dir, wd, env.url, workers=WORKERS).require_agent()
        server = pyrolib.standin_pyroscope.Standin(wd).start()
        try:
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(server.url),
                                    "file": oaplib.file_exporter_yaml(env.files)}, tasks=tasks_yaml())
            canopy.validate()
            canopy.start(env.admin_port)
            check_never_ends(canopy, "at start")
            fleet.start()
            time.sleep(1.0)  # the workers' first command poll (300 ms) brings the tasks
            served = {}
            drivers = [threading.Thread(target=lambda ep=ep: served.__setitem__(ep, fleet.drive(ep, LOAD_S, 3)))
                       for ep in ENDPOINTS.values()]
            load_from = time.time()
            for d in drivers:
                d.start()
            time.sleep(LOAD_S / 2)
            check_never_ends(canopy, "under load")
            for d in drivers:
                d.join()
            load_until = time.time()
            log("served %r in %.1f s" % (served, load_until - load_from))

            def settled():
                pushes = server.all_pushes()
                for tid in ENDPOINTS:
                    times = pyrolib.snapshots_of(env.files, tid)
                    if not times or sum(p.samples for p in pushes if p.labels.get("task_id") == tid) != len(times):
                        return False
                return True
            oaplib.wait_for("every snapshot of both tasks pushed", settled, 20, interval=0.5)

            snaps = oaplib.read_jsonl_dir(env.files)
            for tid, ep in ENDPOINTS.items():
                times = pyrolib.snapshots_of(env.files, tid)
                mine = pyrolib.check_pushes(server.all_pushes(), tid, times,
                                            expect_labels={"service_name": "shop", "endpoint": ep, "mode": "greenlet"})
                # One push per interval for as long as the load ran: every interval that lies wholly inside
                # the load has its push (check_pushes already made them contiguous, once each, with samples).
                first_full = int(load_from) // WINDOW_S * WINDOW_S + WINDOW_S
                last_full = int(load_until) // WINDOW_S * WINDOW_S - WINDOW_S
                froms = {p.from_s for p in mine}
                missing = [f for f in range(first_full, last_full + 1, WINDOW_S) if f not in froms]
                check(not missing, "%s: no push for intervals %r under load (pushed: %r)"
                      % (tid, missing, sorted(froms)))
                check(last_full - first_full >= 6, "the load covered too few intervals to say anything")
                # At most K requests per worker and window: a segment counts in the window of its first
                # snapshot (which may lie in the next window for a request picked in a window's last ms).
                first = {}
                for (t, seg, _), o in snaps.items():
                    if t == tid:
                        k = (o["serviceInstance"], seg)
                        first[k] = min(first.get(k, o["time"]), o["time"])
                per = collections.Counter((inst, ms // (WINDOW_S * 1000)) for (inst, _), ms in first.items())
                instances = {inst for inst, _ in per}
                check(len(instances) == WORKERS, "%s: profiled by %d workers, not %d" % (tid, len(instances), WORKERS))
                over = {k: n for k, n in per.items() if n > K + 1}
                check(not over, "%s: more than max_sampling_count=%d segments in a window: %r" % (tid, K, over))
                for inst in instances:
                    windows = [w for i, w in per if i == inst]
                    span = max(windows) - min(windows) + 1
                    n = sum(c for (i, _), c in per.items() if i == inst)
                    check(n <= K * span + 1, "%s: %s profiled %d requests in %d windows" % (tid, inst, n, span))
                log("%s: %d pushes over %d contiguous intervals, %d snapshots, %d segments (%d workers x %d per "
                    "%d s window)" % (tid, len(mine), (mine[-1].from_s - mine[0].from_s) // WINDOW_S + 1,
                                      len(times), len(first), WORKERS, K, WINDOW_S))
            check_never_ends(canopy, "after the load")
            check(canopy.metric("canopy_pyroscope_pushes_total") == len(
                [p for p in server.all_pushes() if p.labels.get("task_id") in ENDPOINTS]), "pushes metric differs")
            rc = canopy.stop()
            check(rc == 0, "canopy exited %r" % rc)
            log("runtime %.1f s" % (time.time() - started))
        finally:
            fleet.stop()
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
