"""Helpers for canopy's Kafka tests and benchmark: librdkafka's mock cluster as
a process (canopy-kafka-mock), an independent consumer (python3-confluent-kafka)
and ThreadSnapshot stubs generated at test time from proto/skywalking.

The collector, the load generator and the checks come from tests/oap/oaplib.py."""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "oap"))
import oaplib  # noqa: E402
from oaplib import TestFailure, check, log  # noqa: E402,F401

TOPIC = "skywalking-profilings"


def require_consumer():
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("SKIP: python3-confluent-kafka is not installed (scripts/install-deps)", flush=True)
        sys.exit(77)


class Mock:
    """canopy-kafka-mock: 3 brokers on loopback, driven through its stdin."""

    def __init__(self, build_dir, workdir, brokers=3):
        self.bin = os.path.join(build_dir, "bin", "canopy-kafka-mock")
        self.log_path = os.path.join(workdir, "kafka-mock.log")
        self.brokers = brokers
        self.proc = None
        self.bootstrap = None

    def start(self):
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen([self.bin, "--brokers", str(self.brokers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.logf, text=True, bufsize=1)
        first = self.proc.stdout.readline().strip()
        check(first.startswith("bootstrap="), "canopy-kafka-mock said %r" % first)
        self.bootstrap = first.split("=", 1)[1]
        log("mock Kafka cluster: %d brokers at %s" % (self.brokers, self.bootstrap))
        return self

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        check(reply == "ok", "canopy-kafka-mock: %s -> %s" % (line, reply))

    def topic(self, name, partitions=3):
        self.command("topic %s %d" % (name, partitions))

    def stop(self):
        def quit_(proc):
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        oaplib.stop_process(self.proc, 10, ask=quit_)
        self.proc = None
        self.logf = oaplib.close_file(getattr(self, "logf", None))


def snapshot_stubs(workdir):
    """Generates profile_pb2 from proto/skywalking/v3 with grpc_tools (python3-grpc-tools)
    and returns the ThreadSnapshot class."""
    out = os.path.join(workdir, "stubs")
    os.makedirs(out, exist_ok=True)
    proto_dir = os.path.join(REPO, "proto")
    r = subprocess.run([oaplib.PY, "-m", "grpc_tools.protoc", "-I", proto_dir, "--python_out=" + out,
                        "skywalking/v3/common.proto", "skywalking/v3/profile.proto"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "protoc failed:\n%s" % r.stderr)
    if out not in sys.path:
        sys.path.insert(0, out)
    from skywalking.v3 import profile_pb2
    return profile_pb2.ThreadSnapshot


def consume(bootstrap, topic, expect=None, idle_s=5.0, timeout_s=90.0, group="skywalking-consumer"):
    """Reads the topic from the start, as the OAP's kafka-fetcher does (group
    skywalking-consumer, string keys, byte values). Returns [(key, value, partition)]
    once `expect` records came, or after idle_s without a record."""
    from confluent_kafka import Consumer, KafkaError
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    c.subscribe([topic])
    out = []
    last = time.time()
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.5)
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log("consumer: %s" % m.error())
                    continue
                out.append((m.key().decode() if m.key() is not None else None, m.value(), m.partition()))
            if msgs:
                last = time.time()
            if expect is not None and len(out) >= expect:
                # Anything past the expected count would be a duplicate: give it a moment to show.
                extra = c.consume(num_messages=1000, timeout=1.0)
                out.extend((m.key().decode() if m.key() else None, m.value(), m.partition())
                           for m in extra if not m.error())
                break
            if expect is None and out and time.time() - last > idle_s:
                break
    finally:
        c.close()
    return out


def decode_all(records, ThreadSnapshot):
    """[(key, ThreadSnapshot)] of the records."""
    out = []
    for key, value, _ in records:
        s = ThreadSnapshot()
        s.ParseFromString(value)
        out.append((key, s))
    return out


def check_snapshots(decoded, expect_tasks=None, allow_duplicates=False):
    """Keys are taskId+sequence; per (task, segment) sequences are dense from 0
    and, unless allowed, each arrived once. Returns a summary dict."""
    seen = {}
    dups = 0
    for key, s in decoded:
        check(key == "%s%d" % (s.taskId, s.sequence),
              "record key %r is not taskId+sequence (%s, %d)" % (key, s.taskId, s.sequence))
        check(len(s.stack.codeSignatures) > 0, "a snapshot without a stack: %r" % s)
        k = (s.taskId, s.traceSegmentId, s.sequence)
        if k in seen:
            dups += 1
        seen[k] = s
    if not allow_duplicates:
        check(dups == 0, "%d snapshots arrived more than once" % dups)
    segs = {}
    for task, seg, seq in seen:
        segs.setdefault((task, seg), []).append(seq)
    for (task, seg), seqs in segs.items():
        seqs.sort()
        check(seqs == list(range(len(seqs))),
              "segment %s of task %s: sequences are not dense from 0: %r" % (seg, task, seqs[:20]))
    tasks = {t for t, _ in segs}
    if expect_tasks is not None:
        check(tasks == set(expect_tasks), "tasks %r, expected %r" % (sorted(tasks), sorted(expect_tasks)))
    return {"unique": len(seen), "duplicates": dups, "segments": len(segs), "tasks": tasks}


def kafka_exporter_yaml(bootstrap, namespace=None, timeout="30s", extra=""):
    lines = ['    brokers: [%s]' % ", ".join('"%s"' % b for b in bootstrap.split(",")), "    timeout: %s" % timeout,
             "    stats_interval: 500ms"]
    if namespace:
        lines.append('    namespace: "%s"' % namespace)
    if extra:
        lines.append(extra.rstrip("\n"))
    return "\n".join(lines)
