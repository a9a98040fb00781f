#!/usr/bin/python3
"""canopy-loadgen -> canopy (merge_by_task -> kafka + kafka/jsonl + file) ->
librdkafka's mock cluster (3 brokers) <- an independent consumer in the OAP's
group. Every snapshot arrives once per (task, segment, sequence), dense from 0,
as a ThreadSnapshot on <namespace>-skywalking-profilings with key
taskId+sequence, identical to what the file exporter wrote; with format jsonl,
each record is the file exporter's line, key taskId. A continuous task's
snapshots stay out of the skywalking format (the OAP's tasks end) and are in
jsonl. canopy's /metrics agree."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkalib  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402

NAMESPACE = "canopy-test"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen", "canopy-kafka-mock")
    kafkalib.require_consumer()
    with oaplib.Workdir("kafka-export") as wd:
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)
        env = oaplib.Env(args, wd)
        mock = kafkalib.Mock(args.build_dir, wd).start()
        topic = NAMESPACE + "-" + kafkalib.TOPIC
        mock.topic(topic, 3)
        mock.topic("canopy-jsonl", 3)
        try:
            canopy = env.collector({
                "kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, namespace=NAMESPACE),
                "kafka/jsonl": kafkalib.kafka_exporter_yaml(mock.bootstrap, extra="    topic: canopy-jsonl\n"
                                                            "    format: jsonl"),
                "file": oaplib.file_exporter_yaml(env.files),
            }, tasks="  static:\n    - {id: task-2, service: loadgen, endpoint: /c, continuous: true}\n")
            canopy.validate()
            canopy.start(env.admin_port)
            r = env.loadgen(agents=4, batches=25, batch_size=100, depth=20, tasks=3)
            sent = int(r["snapshots"])
            check(r["sent"] == r["acked"], "loadgen: not every batch was acked: %r" % r)
            log("loadgen sent %d snapshots" % sent)
            # The files say how many belong to the continuous task-2, which format skywalking leaves out.
            all_files = oaplib.wait_for(
                "the file exporter's %d snapshots" % sent,
                lambda: (lambda d: d if len(d) >= sent else None)(oaplib.read_jsonl_dir(env.files)), 60)
            continuous = sum(1 for k in all_files if k[0] == "task-2")
            check(continuous > 0, "loadgen sent nothing for task-2")
            total = sent - continuous
            oaplib.wait_metric(canopy, "canopy_kafka_messages_delivered_total", lambda v: v >= total + sent,
                               "canopy to have %d delivery reports" % (total + sent), 60)
            records = kafkalib.consume(mock.bootstrap, topic, expect=total)
            decoded = kafkalib.decode_all(records, ThreadSnapshot)
            summary = kafkalib.check_snapshots(decoded, expect_tasks=["task-0", "task-1"])
            check(summary["unique"] == total, "consumer read %d distinct snapshots, %d sent for tasks that end"
                  % (summary["unique"], total))
            skipped = canopy.metric("canopy_kafka_snapshots_continuous_total")
            check(skipped == continuous, "canopy counts %r continuous snapshots left out, not %d"
                  % (skipped, continuous))
            log("format skywalking: %d continuous snapshots left out and counted" % continuous)
            parts = {p for _, _, p in records}
            log("consumer: %d records on %s in partitions %s, %d segments, no duplicates"
                % (len(records), topic, sorted(parts), summary["segments"]))

            files = all_files
            for _, s in decoded:
                f = files[(s.taskId, s.traceSegmentId, s.sequence)]
                check(list(s.stack.codeSignatures) == f["stack"]["codeSignatures"] and s.time == f["time"],
                      "snapshot %s/%s/%d differs from the file exporter's" % (s.taskId, s.traceSegmentId, s.sequence))

            # format jsonl: the file exporter's very lines, key taskId.
            lines = kafkalib.consume(mock.bootstrap, "canopy-jsonl", expect=sent, group="jsonl-check")
            check(len(lines) == sent, "%d JSON records for %d snapshots" % (len(lines), sent))
            on_disk = set()
            for name in os.listdir(env.files):
                with open(os.path.join(env.files, name), "rb") as f:
                    on_disk.update(line.rstrip(b"\n") for line in f)
            for key, value, _ in lines:
                check(value in on_disk, "a JSON record is not a line the file exporter wrote: %r" % value[:200])
                check(key == json.loads(value)["taskId"], "JSON record key %r is not its taskId" % key)
            log("format jsonl: %d records, each one of the file exporter's lines, key taskId" % len(lines))
            canopy.metric_check("canopy_kafka_messages_failed_total", lambda v: v == 0,
                                "delivery failures with healthy brokers")
            # librdkafka connects only to the brokers it needs (sparse connections): at least the leaders.
            canopy.metric_check("canopy_kafka_broker_up", lambda v: v >= 1, "no broker reported UP")
            rc = canopy.stop()
            check(rc == 0, "canopy exited %r" % rc)
        finally:
            env.close()
            mock.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
