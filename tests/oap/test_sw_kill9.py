"""kill -9 of canopy with a spool, SkyWalking agents in front: every
collectSnapshot stream the receiver acked (OK) is in the durable intake, so
after kill -9 and a restart all its snapshots reach the OAP (down until
then), dense from 0 per segment: 0 acked snapshots lost."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

STREAMS, PER_STREAM = 6, 10


def config(grpc_port, admin_port, oap_target, spool):
    return """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  skywalking:
%s
    spool:
      directory: "%s"
      fsync: always
service:
  shutdown_timeout: 5s
  pipelines:
    profiles:
      receivers: [skywalking]
      processors: [merge_by_task]
      exporters: [skywalking]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
""" % (grpc_port, oaplib.sw_exporter_yaml([oap_target], timeout="2s"), spool, admin_port)


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import sw_agent
    with oaplib.Workdir("sw-kill9") as wd:
        oap = oaplib.Standin(wd)  # not started yet: nothing can be delivered before the kill
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        text = config(grpc_port, admin_port, oap.target, os.path.join(wd, "spool"))
        col = oaplib.Collector(args.build_dir, wd, text)
        col.start(admin_port)
        agent = sw_agent.Agent("127.0.0.1:%d" % grpc_port, "shop")
        try:
            agent.report_properties()
            now = int(time.time() * 1000)
            for i in range(STREAMS):  # each returns only once canopy replied OK
                agent.collect([("task-k9", "seg-%d" % i, s, now + s, ["app.py:main", "app.py:f%d" % s])
                               for s in range(PER_STREAM)])
            log("%d streams acked; kill -9" % STREAMS)
            col.proc.send_signal(signal.SIGKILL)
            col.proc.wait()
            col.proc = None
            oap.start()
            col2 = oaplib.Collector(args.build_dir, wd, text, name="canopy2")
            col2.start(admin_port)
            total = STREAMS * PER_STREAM
            wait_for("all %d acked snapshots at the OAP after the restart" % total,
                     lambda: oap.stats()["snapshots_stored"] >= total, 60)
            oaplib.check_segments(oap, expected=total)
            log("all %d acked snapshots arrived after kill -9, dense from 0" % total)
            check(col2.stop() == 0, "canopy (restarted) did not exit cleanly")
        finally:
            agent.close()
            if col.proc:
                col.stop()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
