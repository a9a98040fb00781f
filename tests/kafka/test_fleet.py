#!/usr/bin/python3
"""The whole path of docs/kafka.md: a real `gunicorn -k gevent -w 4` fleet with
the canopy agent -> canopy (merge_by_task -> kafka + skywalking) -> librdkafka's
mock cluster and a stand-in OAP. Tasks come from the OAP over gRPC
(tasks.skywalking), as in SkyWalking's Kafka setups. Every profiled request's
snapshots arrive on the topic once per (task, segment, sequence), dense from
0, with key taskId+sequence, and they are exactly the snapshots the OAP got
over gRPC."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkalib  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402

WORKERS = 4
TASK_LEFT_S = 20  # the task is created with StartTime in the past so it ends this soon
NAMESPACE = "fleet"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-kafka-mock")
    kafkalib.require_consumer()
    with oaplib.Workdir("kafka-fleet") as wd:
        env = oaplib.Env(args, wd)
        fleet = oaplib.Fleet(args.build_dir, wd, env.url, workers=WORKERS).require_agent()
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)
        mock = kafkalib.Mock(args.build_dir, wd).start()
        topic = NAMESPACE + "-" + kafkalib.TOPIC
        mock.topic(topic, 3)
        oap = oaplib.Standin(wd).start()
        try:
            canopy = env.collector(
                {"kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, namespace=NAMESPACE),
                 "skywalking": oaplib.sw_exporter_yaml([oap.target])},
                tasks="  skywalking:\n    exporter: skywalking\n    poll_interval: 1s\n", flush_interval="300ms")
            canopy.start(env.admin_port)
            task = oap.create_ending_task(TASK_LEFT_S)
            fleet.start()
            oap.wait_notified(task["taskId"], WORKERS)
            time.sleep(1.0)  # the workers' next command poll brings the task from canopy's registry

            log("%d /checkout requests served" % fleet.drive("/checkout", seconds=6))

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
            fleet.stop()
            env.close()
            oap.stop()
            mock.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
