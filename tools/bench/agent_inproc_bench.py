#!/usr/bin/python3
"""CPU cost of profiling every request of a gevent HTTP app, measured in one process.

    /usr/bin/python3 tools/bench/agent_inproc_bench.py [--build build] [--seconds 3] [--rounds 3]

Companion of agent_http_bench.py for a shared, noisy machine. Server
(gevent.pywsgi, the example app) and client (keep-alive gevent HTTP
connections) run in one monkey-patched process; the cost is the process's CPU
time (all threads: app, client, the agent's library and nng threads) per
request, which other processes on the machine do not inflate the way they
swing requests/s. The agent is started and stopped in the same process
between configurations, interleaved round by round; the best round counts.

Because the client's CPU is in the base, the loss is slightly understated
compared with a separate client; the client is a few us per request.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.pywsgi  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "gunicorn-gevent")


class QuietHandler(gevent.pywsgi.WSGIHandler):
    def log_request(self):
        pass


def drive(port, path, seconds, connections):
    done = [0]
    stop = time.time() + seconds

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.time() < stop:
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError("status %d" % r.status)
            done[0] += 1
        c.close()

    t0 = time.process_time()
    gevent.joinall([gevent.spawn(client) for _ in range(connections)], raise_error=True)
    return done[0], time.process_time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--endpoints", default="/products,/checkout")
    ap.add_argument("--collector", help="nng URL of a running collector (default: none, drops counted)")
    ap.add_argument("--json")
    args = ap.parse_args()

    for cand in (os.path.join(args.build, "python"), os.path.join(ROOT, args.build, "python")):
        if os.path.isdir(os.path.join(cand, "canopy_agent")):
            sys.path.insert(0, os.path.abspath(cand))
            break
    sys.path.insert(0, EXAMPLE)
    import app as shop  # noqa: E402

    import canopy_agent  # noqa: E402

    url = args.collector or "ipc:///tmp/canopy-inproc-bench-nobody.sock"
    configs = ["off", "greenlet", "sampling"]
    results = {}
    for endpoint in args.endpoints.split(","):
        wrapped = canopy_agent.wsgi_middleware(shop.app)
        server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), wrapped, handler_class=QuietHandler, log=None)
        server.start()
        port = server.server_port
        per_req = {c: [] for c in configs}
        profiled = {c: 0 for c in configs}
        try:
            drive(port, endpoint, 0.5, args.connections)  # warm-up
            for _ in range(args.rounds):
                for config in configs:
                    if config != "off":
                        canopy_agent.start(collector=url, service="bench", mode=config, command_poll_ms=0,
                                           max_parallel=10 ** 6, max_segments=4096, shutdown_timeout_ms=200,
                                           local_tasks="id=bench,endpoint=%s,max_sampling_count=1000000000,"
                                                       "dump_period_ms=10" % endpoint)
                    try:
                        n, cpu = drive(port, endpoint, args.seconds, args.connections)
                        if config != "off":
                            profiled[config] += canopy_agent.stats()["requests_profiled"]
                    finally:
                        canopy_agent.stop()
                    per_req[config].append(cpu / n * 1e6)
        finally:
            server.stop()
        results[endpoint] = {"cpu_us_per_request": per_req, "profiled": profiled}

    print("gevent HTTP app in one process, every request profiled: CPU us per request (all threads),")
    print("best of %d rounds x %.0fs, %d keep-alive connections; collector %s"
          % (args.rounds, args.seconds, args.connections, args.collector or "absent (snapshots dropped, counted)"))
    print()
    print("%-10s %-9s %10s %10s %10s %10s" % ("endpoint", "mode", "best", "median", "added", "r/s loss"))
    for endpoint, res in results.items():
        per = res["cpu_us_per_request"]
        base = min(per["off"])
        for config in configs:
            best = min(per[config])
            med = sorted(per[config])[len(per[config]) // 2]
            loss = "" if config == "off" else "%9.1f%%" % (100.0 * (1 - base / best))
            print("%-10s %-9s %10.1f %10.1f %10.1f %10s" % (endpoint, config, best, med, best - base, loss))
        if any(res["profiled"][c] == 0 for c in configs if c != "off"):
            print("WARNING: a configuration profiled nothing: %s" % res["profiled"])
    print()
    print("r/s loss = 1 - off/mode of the CPU per request (what a CPU-bound worker loses). Target: < 5%.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
