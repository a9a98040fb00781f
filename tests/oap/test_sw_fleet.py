"""A `gunicorn -k gevent -w 4` fleet of stand-in SkyWalking agents
(sw_fleet_conf.py) against canopy's skywalking receiver: a static task
reaches every worker through getProfileTaskCommands, and the profiled
requests' snapshots land in jsonl under each worker's own instance, dense
from 0 per segment."""
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

WORKERS = 4
TOKEN = "fleet-token"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    with oaplib.Workdir("sw-fleet") as wd:
        grpc_port, admin_port, http_port = oaplib.free_port(), oaplib.free_port(), oaplib.free_port()
        outdir = os.path.join(wd, "out")
        os.makedirs(outdir)
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    authentication: "%s"
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: "%s"
    format: jsonl
service:
  pipelines:
    profiles:
      receivers: [skywalking]
      processors: [merge_by_task]
      exporters: [file]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  static:
    - id: task-fleet
      service: shop
      endpoint: /checkout
      duration: 5m
      max_sampling_count: 5
""" % (grpc_port, TOKEN, outdir, admin_port))
        col.start(admin_port)
        with open(os.path.join(wd, "app.py"), "w") as f:
            f.write(oaplib.CHECKOUT_APP)
        env = dict(os.environ, PYTHONPATH=oaplib.HERE + os.pathsep + wd, SW_TARGET="127.0.0.1:%d" % grpc_port,
                   SW_SERVICE="shop", SW_TOKEN=TOKEN, SW_FLEET_DIR=wd)
        glog = open(os.path.join(wd, "gunicorn.log"), "w")
        fleet = subprocess.Popen([oaplib.PY, "-m", "gunicorn", "-k", "gevent", "-w", str(WORKERS), "-b",
                                  "127.0.0.1:%d" % http_port, "-c", "python:sw_fleet_conf", "app:app"],
                                 cwd=wd, env=env, stdout=glog, stderr=subprocess.STDOUT)
        try:
            def tasks_seen():
                if fleet.poll() is not None:
                    raise oaplib.TestFailure("gunicorn exited:\n" + open(glog.name).read()[-3000:])
                lines = []
                for n in os.listdir(wd):
                    if n.startswith("tasks-"):
                        lines += open(os.path.join(wd, n)).read().split()
                return len([x for x in lines if x == "task-fleet"]) >= WORKERS and lines
            wait_for("the task at all %d workers" % WORKERS, tasks_seen, 60)
            log("task-fleet reached all %d workers" % WORKERS)
            served = [0]
            deadline = time.time() + 30

            def instances():
                for _ in range(8):
                    with urllib.request.urlopen("http://127.0.0.1:%d/checkout" % http_port, timeout=10) as r:
                        r.read()
                    served[0] += 1
                got = oaplib.read_jsonl_dir(outdir)
                inst = {o["serviceInstance"] for o in got.values()}
                return (len(inst) >= WORKERS or time.time() > deadline) and got
            got = wait_for("snapshots from every worker", instances, 60, interval=0.5)
            time.sleep(1.0)
            got = oaplib.read_jsonl_dir(outdir)
            inst = {o["serviceInstance"] for o in got.values()}
            check(len(inst) == WORKERS, "snapshots from %d instances, expected %d: %r" % (len(inst), WORKERS, inst))
            check(all(o["service"] == "shop" and "-child(" in o["serviceInstance"] for o in got.values()),
                  "service/instance names")
            segs = {}
            for (task, seg, seq) in got:
                check(task == "task-fleet", "task %r" % task)
                segs.setdefault(seg, []).append(seq)
            for seg, seqs in segs.items():
                check(sorted(seqs) == [0, 1, 2], "segment %s sequences %r" % (seg, sorted(seqs)))
            log("%d requests; %d snapshots in %d segments from %d workers, dense from 0"
                % (served[0], len(got), len(segs), len(inst)))
        finally:
            oaplib.stop_process(fleet, 20)
            glog.close()
            rc = col.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
