#!/usr/bin/python3
"""canopy-loadgen -> canopy (merge_by_task -> skywalking + file) -> stand-in
OAP. Every snapshot arrives, every segment has sequence 0 and dense
sequences, stacks and times are exactly what the file exporter wrote, no
duplicates, and the OAP saw ONE connection from canopy. task-2 is a
continuous task: its snapshots reach the file exporter, never the OAP."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-export") as wd:
        env = oaplib.Env(args, wd)
        oap = oaplib.Standin(wd).start()
        try:
            canopy = env.collector({
                "skywalking": oaplib.sw_exporter_yaml([oap.target]),
                "file": oaplib.file_exporter_yaml(env.files),
            }, tasks="  static:\n    - {id: task-2, service: loadgen, endpoint: /c, continuous: true}\n")
            canopy.validate()
            canopy.start(env.admin_port)
            r = env.loadgen(agents=4, batches=50, batch_size=100, depth=20, tasks=3)
            sent = int(r["snapshots"])
            check(r["sent"] == r["acked"], "loadgen: not every batch was acked: %r" % r)
            log("loadgen sent %d snapshots (%.0f/s)" % (sent, r["rate"]))
            # Every snapshot in the files first: they say how many belong to the continuous task-2.
            files = oaplib.wait_for(
                "the file exporter's %d snapshots" % sent,
                lambda: (lambda d: d if len(d) >= sent else None)(oaplib.read_jsonl_dir(env.files)), 60)
            continuous = sum(1 for k in files if k[0] == "task-2")
            check(continuous > 0, "loadgen sent nothing for task-2")
            files = {k: v for k, v in files.items() if k[0] != "task-2"}
            total = sent - continuous
            oaplib.wait_for("all %d snapshots at the OAP" % total,
                            lambda: oap.stats()["snapshots_stored"] >= total, 60)
            s = oap.stats()
            seg = oaplib.check_segments(oap, expected=total)
            check(s["duplicates"] == 0, "the OAP received %d duplicates with no failure" % s["duplicates"])
            check(s["connections"] == 1, "the OAP saw %d connections from canopy, not one: %r"
                  % (s["connections"], s["peers"]))
            log("OAP: %d snapshots in %d segments, %d collectSnapshot calls, %d connection"
                % (seg["snapshots"], seg["segments"], s["calls_ok"].get("collectSnapshot", 0), s["connections"]))

            # Same content as the file exporter wrote (stack order, time).
            at_oap = {(x["taskId"], x["traceSegmentId"], x["sequence"]): x for x in oap.get("/snapshots")}
            check(set(files) == set(at_oap), "file and OAP hold different snapshot keys")
            for k, f in files.items():
                o = at_oap[k]
                check(o["stack"] == f["stack"]["codeSignatures"] and o["time"] == f["time"],
                      "snapshot %r differs: OAP %r vs file %r" % (k, o, f))
            canopy.metric_check("canopy_skywalking_snapshots_sent_total", lambda v: v == total,
                                "canopy counts a different number of snapshots sent than %d" % total)
            skipped = canopy.metric("canopy_skywalking_snapshots_continuous_total")
            check(skipped == continuous, "canopy counts %r continuous snapshots skipped, not %d"
                  % (skipped, continuous))
            check(not any(x["taskId"] == "task-2" for x in oap.get("/snapshots")),
                  "a continuous task's snapshots reached the OAP")
            rc = canopy.stop()
            check(rc == 0, "canopy exited %r" % rc)
            check(oap.stats()["connections"] == 1, "more connections after shutdown: %r" % oap.stats()["peers"])
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
