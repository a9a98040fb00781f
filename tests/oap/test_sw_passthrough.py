"""Pass-through: a `gunicorn -k gevent -w 4` fleet of stand-in SkyWalking
agents (sw_fleet_conf.py, SW_PASSTHROUGH=1) points only at canopy, whose
skywalking receiver has `upstream: skywalking`. Against the stand-in OAP:

- trace segments, logs and ManagementService calls arrive at the OAP
  byte-identical to what the agents sent (the OAP records raw bytes);
- the agents' token is canopy's, the OAP's is the exporter's: canopy swaps it;
- the OAP's task still reaches every worker, and their snapshots arrive at
  the OAP dense from 0, attributed (ManagementService observed on the way);
- the OAP sees exactly one connection from canopy (exporter, task source and
  pass-through share it);
- a status the OAP answers (code and message) comes back unchanged;
- the agent's deadline reaches the OAP (and no deadline stays none);
- bytes, calls and errors are counted per method."""
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

WORKERS = 4
AGENT_TOKEN = "agents-token"
OAP_TOKEN = "oap-token"


def sent_calls(wd):
    """Every (method, (hex messages)) the workers sent, from their sent-<pid>.json files."""
    out = []
    for n in os.listdir(wd):
        if n.startswith("sent-") and n.endswith(".json"):
            with open(os.path.join(wd, n)) as f:
                out += [(m, tuple(msgs)) for m, msgs in json.load(f)]
    return out


def missing_at_oap(oap, sent):
    raw = oap.get("/raw")
    have = {}
    for m, calls in raw.items():
        for c in calls:
            have[(m, tuple(c))] = have.get((m, tuple(c)), 0) + 1
    missing = []
    for call in sent:
        if have.get(call, 0) > 0:
            have[call] -= 1
        else:
            missing.append(call)
    return missing, raw


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import grpc
    import sw_agent
    with oaplib.Workdir("sw-passthrough") as wd:
        oap = oaplib.Standin(wd, token=OAP_TOKEN).start()
        grpc_port, admin_port, http_port = oaplib.free_port(), oaplib.free_port(), oaplib.free_port()
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    authentication: "%s"
    upstream: skywalking
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
""" % (grpc_port, AGENT_TOKEN, oaplib.sw_exporter_yaml([oap.target], token=OAP_TOKEN), admin_port))
        fleet = None
        glog = None
        try:
            col.validate()
            col.start(admin_port)
            task = oap.create_task(service="shop", endpointName="/checkout", duration=5, dumpPeriod=10,
                                   maxSamplingCount=5)
            with open(os.path.join(wd, "app.py"), "w") as f:
                f.write(oaplib.CHECKOUT_APP)
            env = dict(os.environ, PYTHONPATH=oaplib.HERE + os.pathsep + wd,
                       SW_TARGET="127.0.0.1:%d" % grpc_port, SW_SERVICE="shop", SW_TOKEN=AGENT_TOKEN,
                       SW_FLEET_DIR=wd, SW_PASSTHROUGH="1")
            glog = open(os.path.join(wd, "gunicorn.log"), "w")
            fleet = subprocess.Popen([oaplib.PY, "-m", "gunicorn", "-k", "gevent", "-w", str(WORKERS), "-b",
                                      "127.0.0.1:%d" % http_port, "-c", "python:sw_fleet_conf", "app:app"],
                                     cwd=wd, env=env, stdout=glog, stderr=subprocess.STDOUT)

            def tasks_seen():
                if fleet.poll() is not None:
                    raise oaplib.TestFailure("gunicorn exited:\n" + open(glog.name).read()[-3000:])
                lines = []
                for n in os.listdir(wd):
                    if n.startswith("tasks-"):
                        lines += open(os.path.join(wd, n)).read().split()
                return len([x for x in lines if x == task["taskId"]]) >= WORKERS
            wait_for("the OAP's task at all %d workers" % WORKERS, tasks_seen, 20)
            for _ in range(24):
                with urllib.request.urlopen("http://127.0.0.1:%d/checkout" % http_port, timeout=10) as r:
                    r.read()
            time.sleep(2.0)  # a few rounds of segments, logs and keepAlives

            # Byte-identical: every call every worker sent is at the OAP, message for message.
            sent = []

            def all_arrived():
                sent[:] = sent_calls(wd)
                missing, raw = missing_at_oap(oap, sent)
                return not missing and len(sent) > 0 and raw
            raw = wait_for("every pass-through call at the OAP, byte-identical", all_arrived, 10)
            kinds = {}
            for m, msgs in sent:
                kinds[m] = kinds.get(m, 0) + 1
            for m in ("TraceSegmentReportService/collect", "LogReportService/collect",
                      "ManagementService/reportInstanceProperties", "ManagementService/keepAlive"):
                check(kinds.get(m, 0) >= WORKERS, "only %d %s calls sent" % (kinds.get(m, 0), m))
            nbytes = sum(len(h) // 2 for _, msgs in sent for h in msgs)
            log("%d calls (%s), %d message bytes: all at the OAP byte-identical"
                % (len(sent), ", ".join("%s %d" % kv for kv in sorted(kinds.items())), nbytes))

            # Snapshots through the pipeline, attributed by the observed ManagementService calls.
            wait_for("snapshots at the OAP", lambda: oap.stats()["snapshots_stored"] >= 3, 15)
            oaplib.check_segments(oap)
            polled = {q["serviceInstance"] for q in oap.get("/queries")}
            check(len(polled) >= WORKERS, "the task source polled for %d instances" % len(polled))

            # Status codes and messages come back unchanged.
            agent = sw_agent.Agent("127.0.0.1:%d" % grpc_port, "shop", token=AGENT_TOKEN)
            try:
                oap.set_mode("fail", code="FAILED_PRECONDITION", methods=["EventService/collect"], count=1)
                try:
                    agent.raw_stream("EventService/collect", [b"\x0a\x03abc"], timeout=5)
                    check(False, "EventService/collect should have failed")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.FAILED_PRECONDITION and e.details() == "stand-in told to fail",
                          "status not passed unchanged: %s %r" % (e.code(), e.details()))
                reply = agent.raw_unary("ConfigurationDiscoveryService/fetchConfigurations", b"\x0a\x04shop",
                                        timeout=7)
                check(reply == b"", "reply bytes %r" % reply)
                dl = oap.get("/deadlines")
                left = dl["ConfigurationDiscoveryService/fetchConfigurations"]
                check(len(left) == 1 and left[0] is not None and 5 < left[0] <= 7.5,
                      "a 7 s deadline arrived at the OAP as %r" % left)
                check(all(x is None or x > 1e6 for x in dl["TraceSegmentReportService/collect"]),
                      "calls without a deadline reached the OAP with one: %r" % dl["TraceSegmentReportService/collect"][:5])
                log("a 7 s deadline reached the OAP with %.2f s left; calls without one had none" % left[0])
                log("FAILED_PRECONDITION and its message came back unchanged; a unary call answered")
            finally:
                agent.close()

            st = oap.stats()
            peers = st["peers"]
            check(len(peers) == 1, "the OAP saw %d connections from canopy: %r" % (len(peers), peers))
            check(st["auth_failures"] == 0, "the OAP refused %d calls' token" % st["auth_failures"])
            m = col.metrics()

            def series(name, **labels):
                return sum(v for k, v in m.items() if k.split("{")[0] == name
                           and all('%s="%s"' % kv in k for kv in labels.items()))
            seg_bytes = series("canopy_skywalking_passthrough_bytes_total",
                               method="TraceSegmentReportService/collect", direction="to_upstream")
            want = sum(len(h) // 2 for mm, msgs in sent if mm == "TraceSegmentReportService/collect" for h in msgs)
            check(seg_bytes >= want, "segment bytes counted %r < sent %r" % (seg_bytes, want))
            check(series("canopy_skywalking_passthrough_calls_total", method="LogReportService/collect") >= WORKERS,
                  "log calls not counted")
            check(series("canopy_skywalking_passthrough_errors_total", method="EventService/collect") == 1,
                  "the failed EventService call not counted")
            check(series("canopy_skywalking_receiver_agents") >= WORKERS, "connected agents %r"
                  % series("canopy_skywalking_receiver_agents"))
            log("the OAP saw one connection (%s); metrics: %d segment bytes forwarded, %d agents connected"
                % (peers[0], seg_bytes, series("canopy_skywalking_receiver_agents")))
        finally:
            if fleet:
                oaplib.stop_process(fleet, 20)
            if glog:
                glog.close()
            rc = col.stop()
            oap.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
