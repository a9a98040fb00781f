"""Pass-through under pressure, a stand-in SkyWalking agent (sw_agent.py)
behind canopy (`upstream: skywalking`, a spooled skywalking exporter):

- max_passthrough_calls: 3 calls hung at the OAP fill it; the 4th gets
  RESOURCE_EXHAUSTED at once and is counted (reason passthrough_full); the
  hung ones complete once the OAP answers;
- the OAP down for 20 s: every collectSnapshot is still acked and every
  snapshot reaches the OAP once it is back (spool); pass-through calls
  (segments, keepAlive) fail fast with UNAVAILABLE, never hang (their
  latency is asserted), and pass through again after;
- an upstream that accepts TCP but never speaks (a black hole: gRPC would
  keep the call waiting while it connects) ends the call with UNAVAILABLE
  after upstream_connect_timeout, on a second receiver;
- canopy stops promptly with a proxied call still hung at the OAP (the
  agent's call is ended, and with it the upstream one)."""
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

OUTAGE_S = 20
FAST_S = 1.5  # upstream_connect_timeout is 1 s; a refused connection fails sooner


def _code(grpc, call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import grpc
    import sw_agent
    with oaplib.Workdir("sw-passthrough-outage") as wd:
        oap = oaplib.Standin(wd, state_file=os.path.join(wd, "oap-state.json")).start()
        grpc_port, admin_port, hole_rx = oaplib.free_port(), oaplib.free_port(), oaplib.free_port()
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # accepted by the kernel, never answered
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    upstream: skywalking
    max_passthrough_calls: 3
    upstream_connect_timeout: 1s
  skywalking/hole:
    listen: "127.0.0.1:%d"
    upstream: skywalking/hole
    upstream_connect_timeout: 1s
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  skywalking:
%s
%s
    spool:
      directory: "%s"
      max_size: 64MiB
      fsync: interval
  skywalking/hole:
    endpoints: ["127.0.0.1:%d"]
service:
  pipelines:
    profiles:
      receivers: [skywalking, skywalking/hole]
      processors: [merge_by_task]
      exporters: [skywalking]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  static:
    - id: task-outage
      service: shop
      endpoint: /checkout
      duration: 10m
""" % (grpc_port, hole_rx, oaplib.sw_exporter_yaml([oap.target], timeout="2s"),
       oaplib.retry_yaml(initial="200ms", max_interval="1s", max_elapsed="0s"), os.path.join(wd, "spool"),
       hole.getsockname()[1], admin_port))
        agent = None
        rc = None
        try:
            col.validate()
            col.start(admin_port)
            agent = sw_agent.Agent("127.0.0.1:%d" % grpc_port, "shop")
            agent.report_properties()
            check(any(c["TaskId"] == "task-outage" for c in agent.query_commands()), "no task for the agent")

            # ---- a black-hole upstream: the connect deadline ----
            lost = sw_agent.Agent("127.0.0.1:%d" % hole_rx, "shop")
            try:
                for i in range(2):  # the first connects; the second finds the channel still connecting
                    t0 = time.time()
                    try:
                        lost.raw_stream("TraceSegmentReportService/collect", [b"\x0a\x01z"], timeout=10)
                        check(False, "a call to a black-hole upstream succeeded")
                    except grpc.RpcError as e:
                        took = time.time() - t0
                        why = e.details()
                        check(e.code() == grpc.StatusCode.UNAVAILABLE and "upstream_connect_timeout" in why,
                              "black hole: %s %r" % (e.code(), why))
                        check(0.8 < took < 2.5, "black hole: ended after %.2f s, upstream_connect_timeout is 1 s"
                              % took)
                log("black-hole upstream: UNAVAILABLE after %.2f s (%s)" % (took, why))
            finally:
                lost.close()

            # ---- the in-flight bound ----
            oap.set_mode("hang", methods=["EventService/collect"])
            results = []

            def hung_call():
                try:
                    agent.raw_stream("EventService/collect", [b"\x0a\x01x"], timeout=15)
                    results.append("OK")
                except grpc.RpcError as e:
                    results.append(e.code().name)
            threads = [threading.Thread(target=hung_call) for _ in range(3)]
            for t in threads:
                t.start()
            wait_metric = oaplib.wait_metric
            wait_metric(col, "canopy_skywalking_passthrough_in_flight", lambda v: v >= 3, "3 calls in flight", 10)
            t0 = time.time()
            try:
                agent.raw_stream("EventService/collect", [b"\x0a\x01y"], timeout=10)
                check(False, "a 4th pass-through call was let through past max_passthrough_calls 3")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "4th call: %s %s" % (e.code(), e.details()))
                check("max_passthrough_calls" in e.details(), "4th call's message: %r" % e.details())
            refused_ms = (time.time() - t0) * 1000
            m = col.metrics()
            full = sum(v for k, v in m.items()
                       if k.startswith("canopy_receiver_refused_total") and 'reason="passthrough_full"' in k)
            check(full >= 1, "the overflow is not counted")
            oap.set_mode("ok")
            for t in threads:
                t.join(15)
            check(results == ["OK"] * 3, "hung calls after the OAP answered: %r" % results)
            log("3 calls in flight held; the 4th got RESOURCE_EXHAUSTED in %.0f ms (counted %d); the 3 then "
                "completed OK" % (refused_ms, full))

            # ---- the OAP down for 20 s ----
            sent = []
            seg = [0]

            def collect():
                now = int(time.time() * 1000)
                snaps = [("task-outage", "seg-%d" % seg[0], s, now + 10 * s, ["app.py:main", "app.py:f%d" % s])
                         for s in range(4)]
                seg[0] += 1
                agent.collect(snaps)  # acked only once durable: it must succeed, OAP or not
                sent.extend(snaps)
            for _ in range(3):
                collect()
            agent.raw_stream("TraceSegmentReportService/collect", [os.urandom(100)], timeout=5)
            oap.stop()
            t_down = time.time()
            lat = []
            codes = {}
            while time.time() - t_down < OUTAGE_S:
                collect()
                for call in (lambda: agent.raw_stream("TraceSegmentReportService/collect", [os.urandom(200)],
                                                      timeout=10),
                             lambda: agent.keep_alive()):
                    t0 = time.time()
                    try:
                        call()
                        code = "OK"
                    except grpc.RpcError as e:
                        code = e.code().name
                    lat.append(time.time() - t0)
                    codes[code] = codes.get(code, 0) + 1
                time.sleep(0.5)
            oap.start()
            lat.sort()
            log("OAP down %.1f s: %d pass-through calls, %r; latency p50 %.0f ms, max %.0f ms; %d snapshots "
                "acked meanwhile" % (time.time() - t_down, len(lat), codes, lat[len(lat) // 2] * 1000,
                                     lat[-1] * 1000, len(sent) - 12))
            check(set(codes) == {"UNAVAILABLE"}, "pass-through calls while the OAP was down: %r" % codes)
            check(lat[-1] < FAST_S, "a pass-through call took %.2f s with the OAP down (not fast)" % lat[-1])

            wait_for("all %d snapshots at the OAP" % len(sent),
                     lambda: oap.stats()["snapshots_stored"] >= len(sent), 30, interval=0.5)
            oaplib.check_segments(oap, expected=len(sent))

            def passes():
                try:
                    agent.raw_stream("TraceSegmentReportService/collect", [b"\x0a\x02ok"], timeout=5)
                    return True
                except grpc.RpcError:
                    return False
            wait_for("pass-through to work again", passes, 10, interval=0.3)
            errors = col.metric("canopy_skywalking_passthrough_errors_total")
            check(errors is None or errors >= len(lat), "pass-through errors counted %r < %d" % (errors, len(lat)))
            log("all %d snapshots at the OAP, dense from 0; pass-through works again; %r errors counted"
                % (len(sent), errors))

            # ---- stop with a proxied call hung at the OAP ----
            oap.set_mode("hang", methods=["EventService/collect"])
            hung = []
            t = threading.Thread(target=lambda: hung.append(_code(grpc, lambda: agent.raw_stream(
                "EventService/collect", [b"\x0a\x01h"], timeout=20))))
            t.start()
            oaplib.wait_metric(col, "canopy_skywalking_passthrough_in_flight", lambda v: v >= 1, "a hung call", 10)
            t0 = time.time()
            rc = col.stop()
            took = time.time() - t0
            t.join(20)
            check(took < 10, "canopy took %.1f s to stop with a hung pass-through call" % took)
            check(hung and hung[0] != "OK", "the hung call: %r" % hung)
            log("stopped in %.1f s with a proxied call hung at the OAP; the agent got %s" % (took, hung[0]))
            oap.set_mode("ok")
        finally:
            if agent:
                agent.close()
            if col.proc:  # a failure before the planned stop
                rc = col.stop()
            oap.stop()
            hole.close()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
