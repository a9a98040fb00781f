#!/usr/bin/python3
"""Requests/s of a gevent HTTP app with every request profiled, vs no agent.

    /usr/bin/python3 tools/bench/agent_http_bench.py [--build build] [--seconds 5] [--rounds 3]

Server: gunicorn -k gevent -w 1 running examples/gunicorn-gevent/app.py,
pinned to CPU 0. Client: wrk (Debian package wrk) pinned to CPU 1, or a
gevent keep-alive client when wrk is missing. A collector with a discard
exporter receives the snapshots (so batching and sending are part of the
cost), pinned to CPU 1 as well.

Configurations, interleaved round by round (best and median reported):
  off        the app without canopy
  greenlet   canopy in greenlet mode, every request profiled
  sampling   canopy in sampling mode at dump_period 10 ms, every request profiled

"Every request profiled" = a local task on the endpoint with no sampling
or parallelism limit. Target: < 5% fewer requests/s than off.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib
from benchlib import free_port, pinned

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "gunicorn-gevent")
PY = "/usr/bin/python3"


def python_client(url, seconds, connections):
    """Fallback load: a gevent keep-alive client in a subprocess; prints req/s."""
    code = r"""
from gevent import monkey; monkey.patch_all()
import http.client, sys, time, urllib.parse, gevent
url, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
done = [0, 0]
stop = time.time() + seconds
def worker():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    while time.time() < stop:
        try:
            c.request("GET", u.path); r = c.getresponse(); r.read()
            done[0 if r.status == 200 else 1] += 1
        except Exception:
            done[1] += 1
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
gevent.joinall([gevent.spawn(worker) for _ in range(conns)])
print("%f %d" % (done[0] / seconds, done[1]))
"""
    out = subprocess.run(pinned(1, [PY, "-c", code, url, str(seconds), str(connections)]), capture_output=True,
                         text=True, timeout=seconds + 60)
    rate, errors = out.stdout.split()
    python_client.last_count = int(float(rate) * seconds)
    return float(rate), int(errors)


def wrk_client(url, seconds, connections):
    out = subprocess.run(pinned(1, ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, url]),
                         capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError("wrk: " + out.stdout + out.stderr)
    n = re.search(r"(\d+) requests in", out.stdout)
    wrk_client.last_count = int(n.group(1)) if n else None
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
    if m3:
        errors += sum(int(x) for x in m3.groups())
    return float(m.group(1)), errors


def run_server(config, endpoint, pythonpath, collector_url, work):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([EXAMPLE, pythonpath])
    cmd = [PY, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", "127.0.0.1:%d" % port,
           "--worker-connections", "1000", "--log-level", "warning"]
    if config != "off":
        env.update({
            "CANOPY_COLLECTOR": collector_url,
            "CANOPY_SERVICE": "bench",
            "CANOPY_MODE": config,
            "CANOPY_LOCAL_TASKS": "id=bench,endpoint=%s,max_sampling_count=1000000000,dump_period_ms=10" % endpoint,
            "CANOPY_MAX_PARALLEL": "1000000",
            "CANOPY_MAX_SEGMENTS": "4096",
        })
        cmd += ["-c", "python:canopy_agent.gunicorn_conf"]
    cmd += ["app:app"]
    log = open(os.path.join(work, "gunicorn-%s.log" % config), "ab")
    proc = subprocess.Popen(pinned(0, cmd), env=env, cwd=EXAMPLE, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base = "http://127.0.0.1:%d" % port
    for _ in range(200):
        try:
            with urllib.request.urlopen(base + "/health", timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    return proc, base


def worker_cpu_seconds(master_pid):
    """CPU time (user + system, all threads) of the master's worker process.

    The machine is shared: requests/s swings with whatever else runs, but the
    CPU the worker spends per request does not (much). For a CPU-bound
    server, the loss of requests/s is 1 - cpu_off / cpu_mode."""
    try:
        with open("/proc/%d/task/%d/children" % (master_pid, master_pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return None
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in kids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            return None
    return total


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--endpoints", default="/products,/checkout")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    pythonpath = None
    for cand in (os.path.join(args.build, "python"), os.path.join(ROOT, args.build, "python")):
        if os.path.isdir(os.path.join(cand, "canopy_agent")):
            pythonpath = os.path.abspath(cand)
    if not pythonpath:
        raise SystemExit("canopy_agent not found under %s/python (run make build)" % args.build)
    binary = None
    for cand in (os.path.join(args.build, "bin", "canopy"), os.path.join(ROOT, args.build, "bin", "canopy")):
        if os.access(cand, os.X_OK):
            binary = cand
    client = wrk_client if shutil.which("wrk") else python_client

    work = tempfile.mkdtemp(prefix="canopy-httpbench-", dir="/tmp")
    collector = benchlib.DiscardCollector(binary, cpu=1) if binary else None
    collector_url = collector.url if collector else "ipc://" + os.path.join(work, "nobody.sock")
    configs = ["off", "greenlet", "sampling"]
    results = {}
    try:
        for endpoint in args.endpoints.split(","):
            rates = {c: [] for c in configs}
            cpu_us = {c: [] for c in configs}
            errors = {c: 0 for c in configs}
            for _ in range(args.rounds):
                for config in configs:
                    proc, base = run_server(config, endpoint, pythonpath, collector_url, work)
                    try:
                        client(base + endpoint, 1, args.connections)  # warm-up
                        master = proc.pid  # taskset execs gunicorn: same pid
                        cpu0 = worker_cpu_seconds(master)
                        rate, errs = client(base + endpoint, args.seconds, args.connections)
                        cpu1 = worker_cpu_seconds(master)
                        count = client.last_count
                        if cpu0 is not None and cpu1 is not None and count:
                            cpu_us[config].append((cpu1 - cpu0) / count * 1e6)
                        if config != "off":
                            with urllib.request.urlopen(base + "/_canopy/stats", timeout=5) as r:
                                st = json.loads(r.read())
                            if not st.get("requests_profiled"):
                                raise RuntimeError("%s: nothing was profiled: %s" % (config, st))
                    finally:
                        stop_server(proc)
                    rates[config].append(rate)
                    errors[config] += errs
            results[endpoint] = {"rates": rates, "cpu_us": cpu_us, "errors": errors}
    finally:
        if collector:
            collector.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("gevent HTTP throughput, every request profiled (gunicorn -k gevent -w 1 on CPU 0; client %s on CPU 1;"
          % ("wrk" if client is wrk_client else "gevent python"))
    print("%d rounds x %ds, %d connections; collector %s; shared 2-core machine: expect noise)"
          % (args.rounds, args.seconds, args.connections, "running (discard)" if collector else "absent"))
    print()
    print("%-10s %-9s %9s %9s %11s %10s %7s" % ("endpoint", "mode", "best r/s", "median", "CPU us/req",
                                                "r/s loss", "errors"))
    verdicts = []
    for endpoint, res in results.items():
        rates, cpu = res["rates"], res["cpu_us"]
        off_cpu = min(cpu["off"]) if cpu["off"] else None
        for config in configs:
            best, med = max(rates[config]), statistics.median(rates[config])
            c = min(cpu[config]) if cpu[config] else None
            loss = ""
            if config != "off" and c and off_cpu:
                value = 100.0 * (1 - off_cpu / c)
                loss = "%9.1f%%" % value
                verdicts.append((endpoint, config, value))
            print("%-10s %-9s %9.0f %9.0f %11s %10s %7d" % (endpoint, config, best, med,
                                                            "%.0f" % c if c else "?", loss,
                                                            res["errors"][config]))
    print()
    print("CPU us/req: worker CPU time (all threads) per request, best round; r/s loss = 1 - off/mode of it,")
    print("the throughput a CPU-bound worker loses. Raw r/s depends on what else runs on the machine.")
    for endpoint, config, value in verdicts:
        print("target: < 5%% loss, %s %s: %.1f%% %s" % (endpoint, config, value, "OK" if value < 5 else "MISSED"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
