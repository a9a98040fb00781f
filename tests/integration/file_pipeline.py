"""End to end: loadgen (8 agents x 100 batches x 256 snapshots, 4 tasks) ->
canopy (nng -> merge_by_task -> file/jsonl). Every snapshot must land once,
in its task's file, with dense sequences from 0 in every segment."""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from cnutil import Collector, loadgen  # noqa: E402

CONFIG = """
receivers:
  nng:
    listen: [ipc://@DIR@/canopy.sock]
processors:
  merge_by_task:
    flush_interval: 300ms
exporters:
  file:
    directory: @DIR@/out
    format: jsonl
service:
  # Under ASan the file exporter is slow; give the drain all the time it needs.
  shutdown_timeout: 2m
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [file]
"""

KEYS = {"taskId", "traceSegmentId", "time", "sequence", "stack", "service", "serviceInstance"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    col = Collector(args.bin, CONFIG).start()
    try:
        res = loadgen(args.bin, "ipc://%s/canopy.sock" % col.workdir, agents=8, batches=100, batch_size=256,
                      depth=20, tasks=4)
    finally:
        rc = col.stop(timeout=180)
    assert rc == 0, "canopy exited with %s" % rc
    assert res["acked"] == 800, res
    expected = 8 * 100 * 256

    out = os.path.join(col.workdir, "out")
    seen = set()
    segments = collections.defaultdict(list)
    total = 0
    for name in sorted(os.listdir(out)):
        task = name[:-len(".jsonl")]
        with open(os.path.join(out, name)) as f:
            for line in f:
                rec = json.loads(line)
                total += 1
                assert set(rec) == KEYS, rec.keys()
                assert rec["taskId"] == task, (rec["taskId"], name)
                assert isinstance(rec["time"], int) and rec["time"] > 1_600_000_000_000
                sigs = rec["stack"]["codeSignatures"]
                assert len(sigs) == 20 and all(": " in s for s in sigs), sigs[:2]
                key = (rec["taskId"], rec["traceSegmentId"], rec["sequence"])
                assert key not in seen, "duplicate %r" % (key,)
                seen.add(key)
                segments[key[:2]].append(rec["sequence"])
    assert total == expected, "expected %d snapshots, found %d" % (expected, total)
    tasks = {k[0] for k in segments}
    assert tasks == {"task-%d" % i for i in range(4)}, tasks
    for seg, seqs in segments.items():
        assert sorted(seqs) == list(range(len(seqs))), "segment %r not dense from 0" % (seg,)
        # merge_by_task writes each segment in sequence order within a flush
    print("ok: %d snapshots in %d files, %d segments, dense, no duplicates; loadgen rate %.0f/s"
          % (total, len(os.listdir(out)), len(segments), res["rate"]))
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
