"""Receiver `skywalking` end to end, with the stand-in SkyWalking agent
(sw_agent.py) against canopy (skywalking receiver -> merge_by_task -> file
exporter, jsonl):

- a static task reaches the agent through getProfileTaskCommands with all
  nine ProfileTaskQuery arguments; one of 30 min is clamped to 15 for it;
  asked again with its lastCommandTime, nothing new comes;
- snapshots it streams land in jsonl with its service and instance, dense
  from 0 per segment; a re-sent stream's duplicates are dropped;
- a wrong token gets UNAUTHENTICATED and is counted;
- garbage messages, an oversized message, HTTP/2 frames of garbage, a
  message declaring 4 GiB (hand-made HTTP/2), a stream that never ends (its
  snapshot kept), 300 connections that never speak (closed after
  handshake_timeout) and a service with no upstream get
  gRPC errors and counters, while the good agent is still served."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402

TOKEN = "s3cret-token"
ARGS = ["SerialNumber", "TaskId", "EndpointName", "Duration", "MinDurationThreshold", "DumpPeriod",
        "MaxSamplingCount", "StartTime", "CreateTime"]


def config(grpc_port, admin_port, outdir):
    return """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    authentication: "%s"
    max_message_size: 64KiB
    max_call_duration: 1s
    handshake_timeout: 1s
    agent_idle_timeout: 3s
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: "%s"
    format: jsonl
service:
  shutdown_timeout: 10s
  pipelines:
    profiles:
      receivers: [skywalking]
      processors: [merge_by_task]
      exporters: [file]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  static:
    - id: task-checkout
      service: shop
      endpoint: /checkout
      duration: 10m
      max_sampling_count: 5
    - id: task-long
      service: shop
      endpoint: /slow
      duration: 30m
""" % (grpc_port, TOKEN, outdir, admin_port)


def snapshots(task, segments, per_segment):
    now = int(time.time() * 1000)
    return [(task, seg, seq, now + seq * 10, ["app.py:main", "app.py:handle", "db.py:query#%d" % seq])
            for seg in segments for seq in range(per_segment)]


def h2_frame(ftype, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literal(name, value):
    """A header as HPACK's literal without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def h2_replies(sk, seconds):
    """Frame types the server sent on stream 1 (and 'closed' when it closed), read for up to `seconds`."""
    import socket
    sk.settimeout(0.2)
    buf, seen, end = b"", set(), time.time() + seconds
    while time.time() < end and not ({"RST_STREAM", "END_STREAM", "GOAWAY", "closed"} & seen):
        try:
            chunk = sk.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            seen.add("closed")
            break
        if not chunk:
            seen.add("closed")
            break
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7fffffff
            buf = buf[9 + n:]
            if ftype == 7:
                seen.add("GOAWAY")
            elif stream == 1 and ftype == 3:
                seen.add("RST_STREAM")
            elif stream == 1 and ftype == 1 and flags & 1:
                seen.add("END_STREAM")
    return seen


def hostile_h2(port, token):
    """A 4 GiB declared message, then garbage frames: what the server answers each with."""
    import socket
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")
    headers = b"".join(hpack_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", "/skywalking.v3.ProfileTask/collectSnapshot"),
        (":authority", "127.0.0.1:%d" % port), ("content-type", "application/grpc"), ("te", "trailers"),
        ("authentication", token)))
    sk = socket.create_connection(("127.0.0.1", port), timeout=5)
    sk.sendall(preface + h2_frame(1, 4, 1, headers) + h2_frame(0, 0, 1, b"\x00\xff\xff\xff\xff" + b"x" * 64))
    huge = h2_replies(sk, 3)
    sk.close()
    sk = socket.create_connection(("127.0.0.1", port), timeout=5)
    sk.sendall(preface + os.urandom(4096))
    garbage = h2_replies(sk, 3)
    sk.close()
    return huge, garbage


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import grpc
    import sw_agent
    with oaplib.Workdir("sw-receiver") as wd:
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        outdir = os.path.join(wd, "out")
        os.makedirs(outdir)
        col = oaplib.Collector(args.build_dir, wd, config(grpc_port, admin_port, outdir))
        col.validate()
        col.start(admin_port)
        target = "127.0.0.1:%d" % grpc_port
        agent = sw_agent.Agent(target, "shop", token=TOKEN)
        try:
            # The real agent's order: properties, commands, keepAlive, snapshots, finish.
            agent.report_properties()
            cmds = agent.query_commands()
            by_task = {c["TaskId"]: c for c in cmds}
            check(set(by_task) == {"task-checkout", "task-long"}, "commands: %r" % cmds)
            for c in cmds:
                check(c["_command"] == "ProfileTaskQuery", "command name %r" % c["_command"])
                check(all(k in c for k in ARGS), "missing args in %r" % c)
                for k in ARGS[3:]:
                    int(c[k])  # the agent parses these as integers
            check(by_task["task-checkout"]["Duration"] == "10", "duration %r" % by_task["task-checkout"])
            check(by_task["task-checkout"]["MaxSamplingCount"] == "5", "%r" % by_task["task-checkout"])
            check(by_task["task-long"]["Duration"] == "15", "30 min not clamped: %r" % by_task["task-long"])
            check("clamped for SkyWalking agents" in col.log(), "no log line for the clamped task")
            check(agent.query_commands() == [], "lastCommandTime not honoured")
            log("commands: %d tasks with all nine args; 30 min clamped to 15" % len(cmds))
            agent.keep_alive()

            segs = ["seg-%d" % i for i in range(3)]
            snaps = snapshots("task-checkout", segs, 5)
            agent.collect(snaps)
            agent.collect(snaps)  # a re-sent stream: its duplicates must go
            agent.report_finish("task-checkout")

            def landed():
                got = oaplib.read_jsonl_dir(outdir)
                return len(got) >= 15 and got
            got = wait_for("15 snapshots in jsonl", landed, 30)
            time.sleep(1.0)  # let any duplicate reach the file, if one got through
            lines = 0
            for name in os.listdir(outdir):
                if name.endswith(".jsonl"):
                    lines += sum(1 for l in open(os.path.join(outdir, name)) if l.strip())
            check(lines == 15, "%d snapshot lines in jsonl, expected 15 (duplicates?)" % lines)
            for (task, seg, seq), o in got.items():
                check(o["service"] == "shop" and o["serviceInstance"] == agent.instance, "identity %r" % o)
            for seg in segs:
                seqs = sorted(s for (_, g, s) in got if g == seg)
                check(seqs == list(range(5)), "segment %s sequences %r" % (seg, seqs))
            log("15 snapshots in jsonl as shop/%s, dense from 0, duplicates dropped" % agent.instance)
            check("reports task task-checkout finished" in col.log(), "finish report not logged")

            # A wrong token.
            bad = sw_agent.Agent(target, "shop", token="wrong")
            try:
                bad.query_commands()
                check(False, "a wrong token was served")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAUTHENTICATED, "wrong token: %s" % e.code())
            finally:
                bad.close()
            col.metric_check("canopy_receiver_refused_total", lambda v: v >= 1, "wrong token not counted")

            # Hostile input, on the good agent's channel.
            md = agent.md()
            raw = agent.channel.unary_unary("/skywalking.v3.ProfileTask/getProfileTaskCommands")
            try:
                raw(b"\xff\xff\xff\xff garbage", metadata=md)
                check(False, "garbage was answered OK")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "garbage: %s" % e.code())
            raw_stream = agent.channel.stream_unary("/skywalking.v3.ProfileTask/collectSnapshot")
            try:
                raw_stream(iter([b"\x0a\x03abc\xff\xff"]), metadata=md)
                check(False, "a garbage stream was answered OK")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "garbage stream: %s" % e.code())
            try:
                agent.collect([("task-checkout", "seg-big", 0, 1, ["x" * 100000])])
                check(False, "an oversized message was taken")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized: %s" % e.code())
            def refused_streams():
                return sum(v for k, v in col.metrics().items()
                           if k.startswith("canopy_skywalking_receiver_refused_total{") and 'type="collectSnapshot"' in k)
            before = refused_streams()
            huge, garbage = hostile_h2(grpc_port, TOKEN)
            wait_for("the 4 GiB declared message counted", lambda: refused_streams() > before, 5)
            check({"RST_STREAM", "END_STREAM", "GOAWAY", "closed"} & huge,
                  "a 4 GiB declared message got no error: %r" % huge)
            check({"GOAWAY", "closed"} & garbage, "garbage frames: the connection stays open: %r" % garbage)
            log("4 GiB declared length: %s; garbage frames: %s" % (sorted(huge), sorted(garbage)))
            other = agent.channel.stream_unary("/skywalking.v3.TraceSegmentReportService/collect")
            try:
                other(iter([b""]), metadata=md)
                check(False, "trace segments were answered OK with no upstream")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNIMPLEMENTED and "upstream" in (e.details() or ""),
                      "no upstream: %s %r" % (e.code(), e.details()))
            def endless():  # a stream that never ends: one snapshot, then nothing
                yield agent.s["profile"].ThreadSnapshot(taskId="task-checkout", traceSegmentId="seg-endless",
                                                        sequence=0, time=1,
                                                        stack=agent.s["profile"].ThreadStack(codeSignatures=["x"]))
                time.sleep(4)
            t0 = time.time()
            try:
                agent.profile.collectSnapshot(endless(), metadata=md)
                check(False, "an endless stream was answered OK")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.time() - t0 < 3.5,
                      "endless stream: %s after %.1f s" % (e.code(), time.time() - t0))
            wait_for("the endless stream's snapshot kept", lambda: any(
                k[1] == "seg-endless" for k in oaplib.read_jsonl_dir(outdir)), 10)
            # Hundreds of connections that never speak: the good agent is served meanwhile, and the
            # server closes them after handshake_timeout.
            import socket
            idle = []
            for _ in range(300):
                sk = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
                idle.append(sk)
            check(agent.query_commands() == [], "good agent with 300 idle connections open")
            time.sleep(2.5)
            closed = 0
            for sk in idle:
                sk.settimeout(0.05)
                try:
                    while True:  # the server's SETTINGS frame first, then the end when it closed
                        if sk.recv(4096) == b"":
                            closed += 1
                            break
                except (socket.timeout, OSError) as e:
                    closed += isinstance(e, ConnectionResetError)
                sk.close()
            check(closed >= 290, "only %d of 300 silent connections closed after handshake_timeout" % closed)
            log("300 silent connections: good agent served, %d closed by handshake_timeout" % closed)
            # The unprefixed compat name older agents call (Satellite serves both).
            compat = agent.channel.unary_unary("/ProfileTask/getProfileTaskCommands")
            q = agent.s["profile"].ProfileTaskCommandQuery(service="shop", serviceInstance=agent.instance,
                                                           lastCommandTime=-1)
            reply = agent.s["common"].Commands.FromString(compat(q.SerializeToString(), metadata=md))
            check(len(reply.commands) == 2, "compat name: %r" % reply)
            agent.keep_alive()  # the good agent is still served
            check(agent.query_commands() == [], "good agent after hostile input")
            m = col.metrics()

            def series(name, label):
                return sum(v for k, v in m.items() if k.startswith(name + "{") and label in k)
            check(series("canopy_receiver_refused_total", 'reason="unauthenticated"') == 1, "unauth count")
            check(series("canopy_receiver_refused_total", 'reason="malformed"') == 2, "malformed count")
            check(series("canopy_receiver_refused_total", 'reason="stream_error"') >= 1, "oversize count")
            check(series("canopy_skywalking_receiver_refused_total",
                         'type="collectSnapshot",reason="stream_error"') >= 1, "per-method refusal count")
            check(series("canopy_receiver_refused_total", 'reason="no_upstream"') == 1, "no upstream count")
            check(series("canopy_skywalking_receiver_unimplemented_total",
                         'method="TraceSegmentReportService/collect"') == 1, "per-method UNIMPLEMENTED count")
            # The endless stream, and the 4 GiB one: gRPC answered its client at once, but only ends
            # our side of it when max_call_duration sweeps it.
            check(series("canopy_receiver_refused_total", 'reason="too_long"') == 2, "too long count")
            check(series("canopy_receiver_accepted_snapshots_total", "skywalking") == 31, "accepted snapshots")
            check(series("canopy_receiver_requests_total", 'type="collectSnapshot"') == 6, "stream count")
            # 2 at the start, the wrong token, the garbage, beside the idle connections, compat, the last.
            check(series("canopy_receiver_requests_total", 'type="getProfileTaskCommands"') == 7, "query count")
            log("hostile input refused and counted; good agent still served")
            check(series("canopy_skywalking_receiver_agents", "skywalking") == 1, "connected agents gauge")
            wait_for("the idle agent forgotten after agent_idle_timeout",
                     lambda: col.metric("canopy_skywalking_receiver_agents") == 0, 10)
            log("connected agents: 1, then 0 after agent_idle_timeout")
        finally:
            agent.close()
            rc = col.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
