#!/usr/bin/python3
"""The durable intake belongs to the pipeline, not to a receiver: batches that
never were nng bytes (the jsonl receiver builds them from files) reach two
spooled exporters exactly once, across a kill -9, and the processors take
each batch in once however many durable exporters there are.

  1. processed once: a first set of files goes through merge_by_task to two
     file exporters, each with a spool; canopy_processor_batches_total of
     merge_by_task equals the batches the receiver handed over, and both
     exporters hold every snapshot once;
  2. kill -9: a larger set of files, killed while the exporters are writing;
     the restart replays the intake log and the spools, the receiver reads
     the files it had not finished again; at the end both exporters hold
     every snapshot of both sets exactly once, and every file is marked done.

Prints `lost=0 dup=0` with the figures and fails otherwise."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spool_lib as sl  # noqa: E402
from spool_lib import check, log  # noqa: E402

TASKS = 4
SEGMENT_LEN = 40


def write_inputs(directory, prefix, files, lines_per_file):
    """Files of the file exporter's jsonl form: each segment's sequences dense
    from 0, spread over two services. Returns the number of snapshots."""
    os.makedirs(directory, exist_ok=True)
    n = 0
    for f in range(files):
        rows = []
        for i in range(lines_per_file):
            seg, seq = divmod(i, SEGMENT_LEN)
            rows.append(json.dumps({
                "taskId": "task-%d" % ((f + seg) % TASKS),
                "traceSegmentId": "%s-f%d-s%d" % (prefix, f, seg),
                "time": 1764800000000 + i, "sequence": seq,
                "stack": {"codeSignatures": ["/srv/app.py.handler: %d" % (seg % 7),
                                             "/srv/lib.py.work: %d" % (i % 13)]},
                "service": "svc-%d" % (f % 2), "serviceInstance": "%d@host" % (100 + f % 3)}))
        # Written under another name and renamed: the receiver never sees half a file.
        tmp = os.path.join(directory, ".%s-%03d.tmp" % (prefix, f))
        with open(tmp, "w") as fh:
            fh.write("\n".join(rows) + "\n")
        os.rename(tmp, os.path.join(directory, "%s-%03d.jsonl" % (prefix, f)))
        n += lines_per_file
    return n


def config(inbox, outs, spools, admin):
    exporters = ""
    for name, out, spool in zip(("file", "file/second"), outs, spools):
        exporters += "  %s:\n%s\n%s\n" % (name, sl.file_yaml(out), sl.spool_yaml(spool, segment_size="1MiB"))
    return """receivers:
  jsonl:
    directory: "%s"
    poll_interval: 50ms
    batch_size: 64
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
%sservice:
  shutdown_timeout: 30s
  pipelines:
    profiles:
      receivers: [jsonl]
      processors: [merge_by_task]
      exporters: [file, file/second]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
""" % (inbox, exporters, admin)


def done_files(inbox):
    return sum(1 for n in os.listdir(inbox) if n.endswith(".jsonl.done"))


def main(args):
    sl.oaplib.require_binaries(args.build_dir, "canopy")
    with sl.oaplib.Workdir("chaos-intake") as wd:
        inbox = os.path.join(wd, "inbox")
        outs = [os.path.join(wd, "out-a"), os.path.join(wd, "out-b")]
        spools = [os.path.join(wd, "spool-a"), os.path.join(wd, "spool-b")]
        admin = sl.free_port()
        os.makedirs(inbox)
        col = sl.Collector(args.build_dir, wd, config(inbox, outs, spools, admin))
        col.validate()
        try:
            col.start(admin)
            # 1. Each batch through the processors once, with two durable exporters.
            first = write_inputs(inbox, "a", 10, 400)
            sl.wait_for("the first files taken in", lambda: done_files(inbox) == 10, 30)
            for out in outs:
                n, _ = sl.wait_lines(out, first, 30, 10)
                check(n == first, "%s holds %d lines of %d" % (out, n, first))
            handed = col.metric("canopy_receiver_accepted_batches_total")
            processed = col.metric("canopy_processor_batches_total")
            log("set 1: %d snapshots in %d batches; merge_by_task took %s batches" % (first, handed, processed))
            check(handed and processed == handed,
                  "merge_by_task took %s batches, the receiver handed over %s" % (processed, handed))

            # 2. kill -9 while the exporters write the second set.
            second = write_inputs(inbox, "b", 60, 2000)
            total = first + second
            sl.wait_for("the exporters to be writing the second set",
                        lambda: sl.count_lines(outs[0]) > first, 60, interval=0.005)
            at_kill = [sl.count_lines(o) for o in outs]
            col.kill9()
            log("killed with %s of %d lines written and %d of 70 files done" % (at_kill, total, done_files(inbox)))
            check(min(at_kill) < total, "the kill came after everything was written; nothing was tested")
            col.start(admin)
            sl.wait_for("every file taken in", lambda: done_files(inbox) == 70, 90)
            for out in outs:
                sl.wait_lines(out, total, 90, 15)
            check(col.stop(60) == 0, "canopy failed to stop")
            replays = sl.grep(col.log(), r"replayed (\d+) batches from the intake log")
            spooled = sl.grep(col.log(), r"(\d+) records \((\d+) bytes\) from before the restart will be replayed")
            log("after the restart: %s intake batches replayed; spools replayed %s records"
                % (replays[0] if replays else 0, [r[0] for r in spooled]))
            results = []
            for out in outs:
                a = sl.audit_jsonl(out)
                results.append(a)
                log("%s: %d lines, %d unique, %d duplicates, %d segments not dense"
                    % (os.path.basename(out), a["lines"], a["unique"], a["dup"], len(a["not_dense"])))
            lost = max(total - a["unique"] for a in results)
            dup = max(a["dup"] for a in results)
            print("lost=%d dup=%d (sent %d snapshots in 70 files, %d batches processed before the kill)"
                  % (lost, dup, total, processed), flush=True)
            check(lost == 0 and dup == 0, "lost=%d dup=%d" % (lost, dup))
            check(all(not a["not_dense"] for a in results), "segments with gaps")
        finally:
            col.stop(30)


if __name__ == "__main__":
    sl.oaplib.run_test(main)
