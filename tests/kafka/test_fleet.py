#!/usr/bin/python3
"""The whole path of docs/kafka.md: a real `gunicorn -k gevent -w 4` fleet with
the canopy agent -> canopy (merge_by_task -> kafka + skywalking) -> librdkafka's
mock cluster and a stand-in OAP. Tasks come from the OAP over gRPC
(tasks.skywalking), as in SkyWalking's Kafka setups. Every profiled request's
snapshots arrive on the topic once per (task, segment, sequence), dense from
0, with key taskId+sequence, and they are exactly the snapshots the OAP got
over gRPC."""
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkalib  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402

WORKERS = 4
TASK_LEFT_S = 20  # the task is created with StartTime in the past so it ends this soon
NAMESPACE = "fleet"

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
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-kafka-mock")
    kafkalib.require_consumer()
    pkg = os.path.join(args.build_dir, "python")
    if not os.path.isfile(os.path.join(pkg, "canopy_agent", "gunicorn_conf.py")):
        print("SKIP: the Python agent is not built (%s/canopy_agent)" % pkg)
        sys.exit(77)
    with oaplib.Workdir("kafka-fleet") as wd:
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)
        env = oaplib.Env(args, wd)
        with open(os.path.join(wd, "app.py"), "w") as f:
            f.write(APP)
        mock = kafkalib.Mock(args.build_dir, wd).start()
        topic = NAMESPACE + "-" + kafkalib.TOPIC
        mock.topic(topic, 3)
        oap = oaplib.Standin(wd).start()
        gunicorn = None
        try:
            canopy = env.collector(
                {"kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, namespace=NAMESPACE),
                 "skywalking": oaplib.sw_exporter_yaml([oap.target])},
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
            oaplib.wait_for("the task to reach all %d workers" % WORKERS, notified, 20)
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

            # Both exporters have everything once the OAP's count stops growing and Kafka's matches it.
            def settled():
                at_oap = oap.stats()["snapshots_stored"]
                delivered = canopy.metric("canopy_kafka_messages_delivered_total") or 0
                return at_oap > 0 and delivered == at_oap and at_oap
            total = int(oaplib.wait_for("the same snapshots at the OAP and on Kafka", settled, 40, interval=1))
            time.sleep(2)  # then again: the last segments may still have been on their way
            total = int(oaplib.wait_for("the same snapshots at the OAP and on Kafka", settled, 20, interval=1))
            decoded = kafkalib.decode_all(kafkalib.consume(mock.bootstrap, topic, expect=total), ThreadSnapshot)
            summary = kafkalib.check_snapshots(decoded, expect_tasks=[task["taskId"]])
            on_kafka = {(s.taskId, s.traceSegmentId, s.sequence): (list(s.stack.codeSignatures), s.time)
                        for _, s in decoded}
            at_oap = {(x["taskId"], x["traceSegmentId"], x["sequence"]): (x["stack"], x["time"])
                      for x in oap.get("/snapshots")}
            check(on_kafka == at_oap, "Kafka and the OAP hold different snapshots: %d vs %d"
                  % (len(on_kafka), len(at_oap)))
            check(any(sig.rsplit(": ", 1)[0].endswith(".checkout") for st, _ in on_kafka.values() for sig in st),
                  "no stack shows the app's checkout function")
            log("topic %s: %d snapshots in %d segments, each once, dense from 0, key taskId+sequence; "
                "the same set the OAP got over gRPC" % (topic, summary["unique"], summary["segments"]))
        finally:
            if gunicorn and gunicorn.poll() is None:
                gunicorn.send_signal(signal.SIGTERM)
                try:
                    gunicorn.wait(20)
                except subprocess.TimeoutExpired:
                    gunicorn.kill()
            env.close()
            oap.stop()
            mock.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
