#!/usr/bin/python3
"""kill -9 of the collector in the middle of a loadgen run, with the spool on
in front of the kafka exporter, then a restart on the same config.

Required: 0 acked snapshots lost. Every batch the loadgen saw acked is in the
spool or on the topic, so the consumer reads every snapshot the loadgen sent,
every segment dense from 0. Reported, not required: duplicates. A snapshot
delivered to the brokers whose delivery report, or whose chunk's mark in the
delivery log, had not been written when the collector died is produced again
after the restart. That is harmless for the OAP: its kafka-fetcher stores a
snapshot under taskId_segmentId_sequence, so the second copy overwrites the
first (and the record key taskId+sequence is the same)."""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "chaos"))
import kafkalib  # noqa: E402
import spool_lib as sl  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen", "canopy-kafka-mock")
    kafkalib.require_consumer()
    with oaplib.Workdir("kafka-kill9") as wd:
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)
        mock = kafkalib.Mock(args.build_dir, wd).start()
        mock.topic(kafkalib.TOPIC, 3)
        url = "ipc://%s/canopy.sock" % wd
        admin = sl.free_port()
        cfg = sl.config(url, admin, {
            "kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, timeout="10s") + "\n"
            + oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s") + "\n"
            + sl.spool_yaml(os.path.join(wd, "spool"), fsync="interval"),
        }, shutdown_timeout="30s")
        col = sl.Collector(args.build_dir, wd, cfg)
        lg = None
        try:
            col.start(admin)
            lg = sl.Loadgen(args.build_dir, url, 8, 400, batch_size=32, depth=12, tasks=4, timeout=80,
                            attempt_timeout=1500)

            def mid_run():
                check(lg.running(), "the loadgen finished before the kill")
                # Delivered implies acked: the spool acks a batch before the exporter sees it.
                return lg.started and time.time() - lg.t0 > 1.0 and \
                    (col.metric("canopy_kafka_messages_delivered_total") or 0) > 0
            sl.wait_for("the run to be under way", mid_run, 60, interval=0.05)
            delivered_at_kill = col.metric("canopy_kafka_messages_delivered_total")
            col.kill9()
            log("kill -9 with %d snapshots delivered to Kafka, of %d the loadgen sends"
                % (delivered_at_kill, lg.snapshots))
            time.sleep(0.3)
            t_restart = time.time()
            col.start(admin)
            res = lg.result(90)
            check(res["rc"] == 0 and res["acked"] == lg.total_batches, "loadgen not fully acked: %r" % res)
            total = lg.snapshots

            def unique_on_topic():
                recs = kafkalib.consume(mock.bootstrap, kafkalib.TOPIC, idle_s=2.0, timeout_s=30,
                                        group="check-%d" % int(time.time() * 1000))
                dec = kafkalib.decode_all(recs, ThreadSnapshot)
                return dec if len({(s.taskId, s.traceSegmentId, s.sequence) for _, s in dec}) >= total else None
            decoded = sl.wait_for("all %d snapshots on the topic" % total, unique_on_topic, 90, interval=1)
            recovery = time.time() - t_restart
            summary = kafkalib.check_snapshots(decoded, allow_duplicates=True)
            check(summary["unique"] == total, "%d of %d acked snapshots on the topic" % (summary["unique"], total))
            check(col.stop(60) == 0, "canopy failed to stop")
            print("lost=0 duplicates=%d (sent %d, %d records on the topic, each (task, segment, sequence) present; "
                  "the duplicates are harmless: the OAP stores a snapshot under taskId_segmentId_sequence and the "
                  "second copy overwrites the first; recovery %.1f s)"
                  % (summary["duplicates"], total, len(decoded), recovery), flush=True)
        finally:
            if lg:
                lg.stop()
            col.stop(30)
            mock.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
