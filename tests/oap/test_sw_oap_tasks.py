"""A SkyWalking agent (the stand-in sw_agent.py) behind canopy's skywalking
receiver, canopy in front of the stand-in OAP (skywalking exporter and
tasks.skywalking): a task created at the OAP reaches the agent through
canopy with all nine arguments; its snapshots arrive at the OAP dense from
0; its finish report is forwarded to the OAP."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

ARGS = ["SerialNumber", "TaskId", "EndpointName", "Duration", "MinDurationThreshold", "DumpPeriod",
        "MaxSamplingCount", "StartTime", "CreateTime"]


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import sw_agent
    with oaplib.Workdir("sw-oap-tasks") as wd:
        oap = oaplib.Standin(wd, token="tok").start()
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  skywalking:
%s
service:
  pipelines:
    profiles:
      receivers: [skywalking]
      processors: [merge_by_task]
      exporters: [skywalking]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  skywalking:
    exporter: skywalking
    poll_interval: 300ms
""" % (grpc_port, oaplib.sw_exporter_yaml([oap.target], token="tok"), admin_port))
        agent = None
        try:
            out = col.validate()
            check("not used" not in out, "validate warns about the task source:\n%s" % out)
            col.start(admin_port)
            task = oap.create_task(service="shop", endpointName="/checkout", duration=5, dumpPeriod=20,
                                   maxSamplingCount=3)
            agent = sw_agent.Agent("127.0.0.1:%d" % grpc_port, "shop")
            agent.report_properties()

            # The agent's very first query gets the OAP's task, as it would from
            # the OAP directly: canopy holds a new instance's first answer for its
            # first poll (first_query_wait), instead of answering "no tasks" and
            # leaving the agent without it for one agent interval (20 s).
            t_query = time.time()
            cmds = [c for c in agent.query_commands() if c["TaskId"] == task["taskId"]]
            check(cmds, "the agent's first query through canopy did not get the OAP's task")
            cmd = cmds[0]
            log("the first query got the OAP's task in %.0f ms" % ((time.time() - t_query) * 1000))
            check(all(k in cmd for k in ARGS), "missing args: %r" % cmd)
            check(cmd["EndpointName"] == "/checkout" and cmd["Duration"] == "5" and cmd["DumpPeriod"] == "20"
                  and cmd["MaxSamplingCount"] == "3", "task args: %r" % cmd)
            log("task %s reached the agent with all nine args" % task["taskId"])
            now = int(time.time() * 1000)
            agent.collect([(task["taskId"], "seg-%d" % g, s, now + 20 * s, ["app.py:main", "app.py:checkout"])
                           for g in range(2) for s in range(5)])
            wait_for("10 snapshots at the OAP", lambda: oap.stats()["snapshots_stored"] >= 10, 30)
            oaplib.check_segments(oap, expected=10)
            agent.report_finish(task["taskId"])

            def finished():
                return [f for f in oap.get("/finish") if f.get("serviceInstance") == agent.instance]
            fin = wait_for("the finish report at the OAP", finished, 20)
            check(fin[0]["service"] == "shop", "finish report: %r" % fin)
            log("10 snapshots at the OAP, dense from 0; finish report forwarded")
        finally:
            if agent:
                agent.close()
            rc = col.stop()
            oap.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
