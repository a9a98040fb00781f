#!/usr/bin/python3
"""Produce errors injected by the mock brokers.

Retriable ones (NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT,
NOT_ENOUGH_REPLICAS): librdkafka retries them itself, every snapshot
arrives once, and no delivery failure reaches canopy's counters.

A permanent one (INVALID_RECORD: the brokers refuse the bytes, which sending
again cannot fix): the snapshots of the refused produce requests are counted
in canopy_kafka_messages_dropped_total and logged, and every other snapshot
arrives.

A fatal one for the idempotent producer (OUT_OF_ORDER_SEQUENCE_NUMBER): the
exporter logs and counts it, builds a new producer, and every snapshot
arrives; duplicates are reported (reports purged with the old producer may
hide deliveries) and harmless for the OAP, which stores a snapshot under
taskId_segmentId_sequence."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkalib  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402


def run(args, wd, ThreadSnapshot, errors, name, count_resends=True):
    env = oaplib.Env(args, os.path.join(wd, name))
    os.makedirs(env.wd, exist_ok=True)
    mock = kafkalib.Mock(args.build_dir, env.wd).start()
    mock.topic(kafkalib.TOPIC, 3)
    try:
        canopy = env.collector({
            "kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, timeout="10s") + "\n"
            + oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s"),
        })
        canopy.start(env.admin_port)
        mock.command("produce-errors %d %s" % (len(errors), " ".join(errors)))
        r = env.loadgen(agents=2, batches=20, batch_size=50, depth=12, tasks=2)
        total = int(r["snapshots"])
        check(r["sent"] == r["acked"], "loadgen: not every batch was acked: %r" % r)

        def settled():
            d = canopy.metric("canopy_kafka_messages_delivered_total") or 0
            g = canopy.metric("canopy_kafka_messages_dropped_total") or 0
            return d + g >= total and (d, g)
        delivered, dropped = oaplib.wait_for("every snapshot delivered or dropped", settled, 60)
        decoded = kafkalib.decode_all(kafkalib.consume(mock.bootstrap, kafkalib.TOPIC, expect=int(delivered)),
                                      ThreadSnapshot)
        summary = kafkalib.check_snapshots(decoded, allow_duplicates=not count_resends) if not dropped else None
        unique = len({(s.taskId, s.traceSegmentId, s.sequence) for _, s in decoded})
        failed = canopy.metric("canopy_kafka_messages_failed_total")
        fatal = canopy.metric("canopy_kafka_fatal_errors_total")
        # Resends show as messages sent past those reported, once the statistics refresh (500 ms).
        def sent():
            n = canopy.metric("canopy_kafka_sent_messages") or 0
            return n >= total and n
        resent = oaplib.wait_for("librdkafka's statistics", sent, 10) - delivered - dropped if count_resends else None
        text = canopy.log()
        check(canopy.stop() == 0, "canopy failed to stop")
        return {"total": total, "delivered": delivered, "dropped": dropped, "unique": unique,
                "failed": failed, "fatal": fatal, "resent": resent, "log": text, "summary": summary}
    finally:
        env.close()
        mock.stop()


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen", "canopy-kafka-mock")
    kafkalib.require_consumer()
    with oaplib.Workdir("kafka-errors") as wd:
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)

        r = run(args, wd, ThreadSnapshot,
                ["NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS"] * 2, "retriable")
        check(r["unique"] == r["total"] and r["dropped"] == 0,
              "retriable errors: %d of %d arrived, %d dropped" % (r["unique"], r["total"], r["dropped"]))
        check(r["failed"] == 0, "retriable errors reached canopy as %d failed reports" % r["failed"])
        check(r["resent"] > 0, "no message was sent twice: were the errors injected?")
        log("retriable errors: all %d snapshots arrived once; librdkafka resent %d messages itself"
            % (r["total"], r["resent"]))

        r = run(args, wd, ThreadSnapshot, ["INVALID_RECORD"] * 2, "permanent")
        check(r["dropped"] > 0, "a permanent error dropped nothing: %r" % {k: v for k, v in r.items() if k != "log"})
        check(r["unique"] + r["dropped"] == r["total"],
              "permanent error: %d arrived + %d dropped != %d sent" % (r["unique"], r["dropped"], r["total"]))
        check("refused them for good" in r["log"], "the drop is not logged")
        check("the exporter failed permanently" not in r["log"] or r["unique"] == 0,
              "a partly delivered chunk was counted as dropped whole by the core")
        log("permanent error: %d snapshots dropped, counted and logged; the other %d arrived"
            % (r["dropped"], r["unique"]))

        r = run(args, wd, ThreadSnapshot, ["OUT_OF_ORDER_SEQUENCE_NUMBER"], "fatal", count_resends=False)
        check(r["fatal"] >= 1, "the fatal error was not counted")
        check("producer rebuilt" in r["log"], "the producer was not rebuilt")
        check(r["unique"] == r["total"] and r["dropped"] == 0,
              "fatal error: %d of %d arrived, %d dropped" % (r["unique"], r["total"], r["dropped"]))
        log("fatal error: counted, producer rebuilt, all %d snapshots arrived (%d duplicates, harmless: the OAP "
            "stores a snapshot under taskId_segmentId_sequence)" % (r["total"], r["summary"]["duplicates"]))


if __name__ == "__main__":
    oaplib.run_test(main)
