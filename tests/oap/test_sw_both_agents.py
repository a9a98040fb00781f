"""Both agents at once: canopy's own agent (nng, here canopy-loadgen) and a
SkyWalking agent (gRPC, the stand-in sw_agent.py) feed one pipeline, and
one task's flame graph (the folded exporter) and its jsonl hold both."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

SW_FRAME = "sw_app.py:handle_from_skywalking"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    import sw_agent
    with oaplib.Workdir("sw-both") as wd:
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        sock = "ipc://%s/canopy.sock" % wd
        outdir, folded = os.path.join(wd, "out"), os.path.join(wd, "folded")
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  nng:
    listen: ["%s"]
  skywalking:
    listen: "127.0.0.1:%d"
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: "%s"
    format: jsonl
  folded:
    directory: "%s"
    interval: 300ms
service:
  pipelines:
    profiles:
      receivers: [nng, skywalking]
      processors: [merge_by_task]
      exporters: [file, folded]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
""" % (sock, grpc_port, outdir, folded, admin_port))
        col.start(admin_port)
        agent = sw_agent.Agent("127.0.0.1:%d" % grpc_port, "shop-sw")
        try:
            agent.report_properties()
            now = int(time.time() * 1000)
            agent.collect([("task-0", "sw-seg-%d" % g, s, now + s, ["sw_app.py:main", SW_FRAME])
                           for g in range(2) for s in range(4)])
            lg = oaplib.loadgen(args.build_dir, sock, agents=1, batches=2, batch_size=10, depth=6, tasks=1)
            log("loadgen: %r" % lg)

            def both():
                got = oaplib.read_jsonl_dir(outdir)
                services = {o["service"] for k, o in got.items() if k[0] == "task-0"}
                return len(services) >= 2 and services
            services = wait_for("task-0 in jsonl from both agents", both, 30)
            check("shop-sw" in services, "services %r" % services)
            path = os.path.join(folded, "task-0.folded")

            def flame():
                text = open(path).read() if os.path.exists(path) else ""
                lines = [l for l in text.splitlines() if l.strip()]
                sw = [l for l in lines if SW_FRAME in l]
                other = [l for l in lines if SW_FRAME not in l]
                return sw and other and (sw, other)
            sw, other = wait_for("task-0's flame graph with both agents' stacks", flame, 30)
            check(sum(int(l.rsplit(" ", 1)[1]) for l in sw) == 8, "SkyWalking samples in the flame graph: %r" % sw)
            log("task-0: jsonl from %s; flame graph: %d SkyWalking stacks, %d canopy-agent stacks"
                % (sorted(services), len(sw), len(other)))
        finally:
            agent.close()
            rc = col.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
