#!/usr/bin/python3
"""The whole path, as in production: stand-in OAP <- canopy (skywalking
exporter + tasks.skywalking) <- a real `gunicorn -k gevent -w 4` fleet with
the canopy agent. A task created at the stand-in reaches every worker;
profiled requests' snapshots arrive with sequence 0 and dense sequences per
segment; each worker instance reports the task finished when it ends; and
the stand-in saw one gRPC connection from canopy, not one per worker."""
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402

WORKERS = 4
TASK_LEFT_S = 20  # the task is created with StartTime in the past so it ends this soon

APP = '''
import hashlib
import gevent


def price(n):
    h = b"x"
    for _ in range(n):
        h = hashlib.sha256(h).digest()
    return h


def reserve_inventory():
    gevent.sleep(0.03)


def checkout():
    reserve_inventory()
    price(20000)
    gevent.sleep(0.03)
    price(20000)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/checkout":
        checkout()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    pkg = os.path.join(args.build_dir, "python")
    if not os.path.isfile(os.path.join(pkg, "canopy_agent", "gunicorn_conf.py")):
        print("SKIP: the Python agent is not built (%s/canopy_agent)" % pkg)
        sys.exit(77)
    with oaplib.Workdir("sw-fleet") as wd:
        env = oaplib.Env(args, wd)
        with open(os.path.join(wd, "app.py"), "w") as f:
            f.write(APP)
        oap = oaplib.Standin(wd).start()
        gunicorn = None
        try:
            canopy = env.collector(
                {"skywalking": oaplib.sw_exporter_yaml([oap.target])},
                tasks="  skywalking:\n    exporter: skywalking\n    poll_interval: 1s\n", flush_interval="300ms")
            canopy.start(env.admin_port)
            now = int(time.time() * 1000)
            task = oap.create_task(service="shop", endpointName="/checkout", duration=1, dumpPeriod=10,
                                   minDurationThreshold=0, maxSamplingCount=9,
                                   startTime=now - (60 - TASK_LEFT_S) * 1000)
            port = oaplib.free_port()
            genv = dict(os.environ, PYTHONPATH=pkg + os.pathsep + wd, CANOPY_COLLECTOR=env.url,
                        CANOPY_SERVICE="shop", CANOPY_COMMAND_POLL_MS="300", CANOPY_MODE="auto")
            glog = open(os.path.join(wd, "gunicorn.log"), "w")
            gunicorn = subprocess.Popen(
                [oaplib.PY, "-m", "gunicorn", "-k", "gevent", "-w", str(WORKERS), "-b", "127.0.0.1:%d" % port,
                 "-c", "python:canopy_agent.gunicorn_conf", "app:app"],
                cwd=wd, env=genv, stdout=glog, stderr=subprocess.STDOUT)
            base = "http://127.0.0.1:%d" % port

            def up():
                if gunicorn.poll() is not None:
                    raise oaplib.TestFailure("gunicorn exited:\n" + open(glog.name).read()[-3000:])
                with urllib.request.urlopen(base + "/", timeout=2) as r:
                    return r.status == 200
            oaplib.wait_for("gunicorn to serve", up, 30)

            def notified():
                n = {t["taskId"]: t["notified"] for t in oap.get("/tasks")}[task["taskId"]]
                return len(n) >= WORKERS and n
            n = oaplib.wait_for("canopy to ask the OAP on behalf of all %d workers" % WORKERS, notified, 20)
            log("OAP notified %d instances of the task: %s" % (len(n), sorted(n)))
            check(all(v == 1 for v in n.values()), "an instance was notified more than once: %r" % n)
            time.sleep(1.0)  # the workers' next command poll brings the task from canopy's registry

            stop = threading.Event()
            done = [0]

            def client():
                while not stop.is_set():
                    try:
                        with urllib.request.urlopen(base + "/checkout", timeout=10) as r:
                            r.read()
                        done[0] += 1
                    except OSError:
                        time.sleep(0.1)
            threads = [threading.Thread(target=client) for _ in range(12)]
            for t in threads:
                t.start()
            time.sleep(6)
            stop.set()
            for t in threads:
                t.join(15)
            log("%d /checkout requests served" % done[0])

            def finished():
                f = [x for x in oap.get("/finish") if x["taskId"] == task["taskId"]]
                return len({x["serviceInstance"] for x in f}) >= WORKERS and f
            fin = oaplib.wait_for("a finish report from every worker when the task ends", finished,
                                  TASK_LEFT_S + 30, interval=0.5)
            insts = sorted({x["serviceInstance"] for x in fin})
            check(set(insts) == set(n), "finish reports from %r, notified %r" % (insts, sorted(n)))

            oaplib.wait_for("snapshots at the OAP", lambda: oap.stats()["snapshots_stored"] > 0, 10)
            time.sleep(1)
            seg = oaplib.check_segments(oap)
            check(task["taskId"] in seg["tasks"], "no snapshot for the task: %r" % list(seg["tasks"]))
            s = oap.stats()
            check(s["connections"] == 1, "the OAP saw %d connections, not one: %r" % (s["connections"], s["peers"]))
            log("OAP: %d snapshots in %d segments; finish reports from %d workers; %d connection"
                % (seg["snapshots"], seg["segments"], len(insts), s["connections"]))
        finally:
            if gunicorn and gunicorn.poll() is None:
                gunicorn.send_signal(signal.SIGTERM)
                try:
                    gunicorn.wait(20)
                except subprocess.TimeoutExpired:
                    gunicorn.kill()
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
