#!/usr/bin/python3
"""All three brokers go down for 20 s under load, then come back. Agents keep
being acked (the data waits in the exporter's queue and in librdkafka's),
snapshots whose timeout ran out during the outage are retried, and once the
brokers are back every snapshot arrives: 0 lost, every segment dense from 0.
Duplicates are counted and reported: the OAP stores a snapshot under
taskId_segmentId_sequence, so a second copy would overwrite the first."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkalib  # noqa: E402
from kafkalib import check, log, oaplib  # noqa: E402

OUTAGE_S = 20
SHUTDOWN_S = "4s"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen", "canopy-kafka-mock")
    kafkalib.require_consumer()
    with oaplib.Workdir("kafka-outage") as wd:
        ThreadSnapshot = kafkalib.snapshot_stubs(wd)
        env = oaplib.Env(args, wd)
        mock = kafkalib.Mock(args.build_dir, wd).start()
        mock.topic(kafkalib.TOPIC, 3)
        try:
            # A timeout shorter than the outage: the retry path runs, not only librdkafka's wait.
            canopy = env.collector({
                "kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, timeout="8s") + "\n"
                + oaplib.retry_yaml(initial="200ms", max_interval="2s", max_elapsed="0s"),
            }, flush_interval="200ms", shutdown_timeout=SHUTDOWN_S)
            canopy.start(env.admin_port)
            load = oaplib.SteadyLoad(env)
            time.sleep(3)
            log("all brokers down for %d s (%d snapshots sent so far)" % (OUTAGE_S, load.total()))
            mock.command("down -1")
            t_down = time.time()
            time.sleep(OUTAGE_S)
            mock.command("up -1")
            log("brokers up after %.1f s; %d snapshots sent so far" % (time.time() - t_down, load.total()))
            time.sleep(3)
            total = load.stop()
            oaplib.wait_metric(canopy, "canopy_kafka_messages_delivered_total", lambda v: v >= total,
                               "canopy to have %d delivery reports" % total, 90)
            decoded = kafkalib.decode_all(kafkalib.consume(mock.bootstrap, kafkalib.TOPIC, expect=total),
                                          ThreadSnapshot)
            summary = kafkalib.check_snapshots(decoded, allow_duplicates=True)
            check(summary["unique"] == total, "%d of %d snapshots arrived: %d lost"
                  % (summary["unique"], total, total - summary["unique"]))
            retried = canopy.metric_check("canopy_kafka_chunks_retried_total", lambda v: v > 0,
                                          "no retries counted across a 20 s outage with an 8 s timeout")
            log("0 lost: %d snapshots in %d segments; %s exports retried; %d duplicates (harmless: the OAP "
                "stores a snapshot under taskId_segmentId_sequence, a second copy overwrites the first)"
                % (total, summary["segments"], retried, summary["duplicates"]))

            # Shutdown with every broker down: the flush waits for librdkafka's queue only until
            # service.shutdown_timeout, then gives up, and says what it left.
            mock.command("down -1")
            r = env.loadgen(agents=1, batches=5, batch_size=50, depth=12, tasks=1)
            check(r["sent"] == r["acked"], "loadgen not acked with the brokers down: %r" % r)
            time.sleep(1)
            t0 = time.time()
            canopy.stop(timeout=30)
            took = time.time() - t0
            check(took < 4 + 3, "canopy took %.1f s to stop with shutdown_timeout %s" % (took, SHUTDOWN_S))
            check("not acknowledged" in canopy.log(), "what shutdown left behind is not logged")
            log("shutdown with the brokers down took %.1f s (shutdown_timeout %s)" % (took, SHUTDOWN_S))
        finally:
            env.close()
            mock.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
