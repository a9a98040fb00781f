#!/usr/bin/python3
"""Kafka path benchmark (issue 14). Prints one Markdown table.

For each compression setting, into librdkafka's mock cluster (3 brokers on
loopback, canopy-kafka-mock), in the same run:
  canopy    canopy-loadgen (N agents) -> canopy: nng -> merge_by_task -> kafka
            exporter; timed from the loadgen's start until canopy has a
            successful delivery report for every snapshot. The collector's
            CPU (user + system, from /proc) is taken over the same span.
  baseline  canopy-kafka-baseline: a plain librdkafka producer with the same
            settings (acks=all, idempotence, the same compression) sending the
            very records canopy wrote (read back from its topic, untimed),
            timed until every delivery report is in.
Wire bytes are librdkafka's tx_bytes (request bytes written to the sockets,
compressed) over the snapshots; value bytes are the encoded ThreadSnapshots.

    /usr/bin/python3 tools/bench/kafka_bench.py [--build build] [--quick]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "kafka"))
import kafkalib  # noqa: E402
from kafkalib import oaplib  # noqa: E402

from benchlib import cpu_seconds  # noqa: E402


def one(args, wd, mock, compression, agents, batches, batch_size, depth):
    sub = os.path.join(wd, compression)
    os.makedirs(sub)
    env = oaplib.Env(args, sub)
    topic = "canopy-" + compression
    # 16 partitions: the mock keeps only a few MB per partition, and the baseline reads canopy's records back.
    mock.topic(topic, 16)
    mock.topic("baseline-" + compression, 16)
    canopy = env.collector({
        "kafka": kafkalib.kafka_exporter_yaml(mock.bootstrap, extra="    topic: %s\n    compression: %s"
                                              % (topic, compression)).replace("stats_interval: 500ms",
                                                                              "stats_interval: 200ms")
        + "\n" + oaplib.retry_yaml(initial="100ms", max_interval="1s", max_elapsed="0s"),
    }, flush_interval="200ms", log_level="warn")
    try:
        canopy.start(env.admin_port)
        cpu0 = cpu_seconds(canopy.proc.pid)
        t0 = time.time()
        r = env.loadgen(agents=agents, batches=batches, batch_size=batch_size, depth=depth, tasks=4)
        total = int(r["snapshots"])
        oaplib.wait_for("canopy to deliver %d snapshots" % total,
                        lambda: (canopy.metric("canopy_kafka_messages_delivered_total") or 0) >= total, 300,
                        interval=0.05)
        seconds = time.time() - t0
        cpu = cpu_seconds(canopy.proc.pid) - cpu0
        time.sleep(0.5)  # one more statistics round for the byte counts
        wire = canopy.metric("canopy_kafka_sent_bytes")
        value = canopy.metric("canopy_kafka_bytes_delivered_total")
    finally:
        env.close()
    b = subprocess.run([os.path.join(args.build_dir, "bin", "canopy-kafka-baseline"), "--brokers", mock.bootstrap,
                        "--from", topic, "--to", "baseline-" + compression, "--count", str(total),
                        "--compression", compression], capture_output=True, text=True, timeout=600)
    oaplib.check(b.returncode == 0, "canopy-kafka-baseline failed:\n" + b.stderr[-2000:])
    base = {k: float(v) for k, v in (p.split("=") for p in b.stdout.split())}
    return {"compression": compression, "snapshots": total, "canopy_rate": total / seconds,
            "base_rate": base["rate"], "wire": wire / total, "base_wire": base["wire_bytes"] / total,
            "value": value / total, "cpu_per_m": cpu / total * 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true", help="a smaller run, for a smoke test")
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build)
    for b in ("canopy", "canopy-loadgen", "canopy-kafka-mock", "canopy-kafka-baseline"):
        if not os.access(os.path.join(args.build_dir, "bin", b), os.X_OK):
            sys.exit("kafka_bench: %s is not built (make build)" % b)
    agents, batches, batch_size, depth = (4, 25, 100, 20) if args.quick else (8, 50, 128, 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="canopy-kafka-bench-") as wd:
        mock = kafkalib.Mock(args.build_dir, wd).start()
        try:
            for comp in ("none", "gzip", "lz4", "zstd"):
                rows.append(one(args, wd, mock, comp, agents, batches, batch_size, depth))
        finally:
            mock.stop()
    print()
    print("%d agents x %d batches x %d snapshots of %d frames, 4 tasks; mock cluster of 3 brokers on loopback; "
          "acks=all, idempotent producer" % (agents, batches, batch_size, depth))
    print()
    print("| compression | canopy snapshots/s | plain librdkafka snapshots/s | canopy / plain | "
          "value bytes/snapshot | wire bytes/snapshot (canopy, plain) | collector CPU s per 1M snapshots |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| %s | %.0f | %.0f | %.2f | %.0f | %.0f, %.0f | %.1f |"
              % (r["compression"], r["canopy_rate"], r["base_rate"], r["canopy_rate"] / r["base_rate"], r["value"],
                 r["wire"], r["base_wire"], r["cpu_per_m"]))


if __name__ == "__main__":
    main()
