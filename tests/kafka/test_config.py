#!/usr/bin/python3
"""`canopy validate` on Kafka exporter configs: a good one passes; an unknown
`producer:` property, a bad value, acks without all under the idempotent
producer and a bad topic are errors at FILE:LINE:COL, with librdkafka's own
message for the property."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kafkalib import check, log, oaplib  # noqa: E402

GOOD = """exporters:
  kafka:
    brokers: ["127.0.0.1:9092"]
    namespace: prod
    compression: zstd
    producer:
      linger.ms: "20"
      security.protocol: plaintext
service:
  pipelines:
    profiles:
      receivers: [nng]
      exporters: [kafka]
receivers:
  nng:
    listen: ["ipc:///tmp/canopy-kafka-config.sock"]
"""


def validate(bin_, wd, name, text):
    path = os.path.join(wd, name)
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([bin_, "validate", "-c", path], capture_output=True, text=True, timeout=30)
    return path, r.returncode, r.stdout + r.stderr


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    bin_ = os.path.join(args.build_dir, "bin", "canopy")
    with oaplib.Workdir("kafka-config") as wd:
        _, rc, out = validate(bin_, wd, "good.yaml", GOOD)
        check(rc == 0, "a good Kafka config failed to validate:\n" + out)

        bad = GOOD.replace('      linger.ms: "20"\n', '      linger.ms: "20"\n      no.such.property: "1"\n')
        path, rc, out = validate(bin_, wd, "unknown.yaml", bad)
        log("unknown property: " + out.strip())
        check(rc != 0, "an unknown producer property validated")
        # The key's own place (line 8, column 7) and librdkafka's words for it.
        check(re.search(r"%s:8:7: producer\.no\.such\.property: .*No such configuration property" % re.escape(path),
                        out), "no FILE:LINE:COL error with librdkafka's message:\n" + out)

        bad = GOOD.replace('linger.ms: "20"', 'linger.ms: "20"\n      no.such.one: "1"\n      also.unknown: "2"')
        _, rc, out = validate(bin_, wd, "two.yaml", bad)
        check(rc != 0 and "no.such.one" in out and "also.unknown" in out,
              "validate does not report every bad property:\n" + out)

        bad = GOOD.replace('linger.ms: "20"', 'linger.ms: "soon"')
        path, rc, out = validate(bin_, wd, "value.yaml", bad)
        log("bad value: " + out.strip())
        check(rc != 0 and re.search(r"%s:7:\d+: producer\.linger\.ms: " % re.escape(path), out),
              "a bad producer value is not an error at its place:\n" + out)

        bad = GOOD.replace("namespace: prod", "namespace: prod/eu")
        path, rc, out = validate(bin_, wd, "topic.yaml", bad)
        check(rc != 0 and "prod/eu-skywalking-profilings" in out and "%s:4:" % path in out,
              "a namespace that makes an invalid topic is not an error:\n" + out)

        bad = GOOD.replace('      security.protocol: plaintext\n', '      acks: "1"\n')
        path, rc, out = validate(bin_, wd, "acks.yaml", bad)
        check(rc != 0 and re.search(r"%s:8:\d+: producer\.acks: 1 needs enable\.idempotence" % re.escape(path), out),
              "acks=1 with the idempotent producer on is not a validate error:\n" + out)
        ok = GOOD.replace('      security.protocol: plaintext\n', '      acks: "1"\n      enable.idempotence: "false"\n')
        _, rc, out = validate(bin_, wd, "acks-ok.yaml", ok)
        check(rc == 0, "acks=1 without idempotence failed to validate:\n" + out)

        bad = GOOD.replace('      security.protocol: plaintext\n', '      bootstrap.servers: "x:1"\n')
        _, rc, out = validate(bin_, wd, "servers.yaml", bad)
        check(rc != 0 and "set `brokers` instead" in out, "bootstrap.servers in producer: is not refused:\n" + out)


if __name__ == "__main__":
    oaplib.run_test(main)
