"""Receiver `skywalking`: max_connections, enforced by the connection gate
(plugins/receivers/skywalking/sw_gate.c) in front of the gRPC server.

- with max_connections: 20, 20 idle TCP connections are taken; the 21st is
  closed at once (EOF within half a second, long before handshake_timeout),
  counted as canopy_receiver_refused_total{reason="connections"} and logged
  with the agent's own address; a SkyWalking agent's call meanwhile gets
  UNAVAILABLE;
- once some idle ones close, a good agent's getProfileTaskCommands and
  collectSnapshot are served;
- the idle ones are closed by gRPC's handshake_timeout and the gate frees
  their slots: 19 new connections beside the agent's are all taken;
- a refused call names the agent's address too, not the gate's inner
  connection (127.0.0.1:<ephemeral port>)."""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402
from test_sw_receiver import h2_frame, h2_replies, hpack_literal  # noqa: E402

TOKEN = "gate-token"
MAX = 20


def config(grpc_port, admin_port):
    return """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    authentication: "%s"
    max_connections: %d
    handshake_timeout: 3s
exporters:
  discard:
service:
  pipelines:
    profiles:
      receivers: [skywalking]
      exporters: [discard]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  static:
    - id: task-gate
      service: shop
      endpoint: /checkout
      duration: 10m
""" % (grpc_port, TOKEN, MAX, admin_port)


def closed_within(sk, seconds):
    """True when the peer closes (EOF or reset) within `seconds`; bytes it sends first are read past."""
    end = time.time() + seconds
    while time.time() < end:
        sk.settimeout(max(0.01, end - time.time()))
        try:
            if sk.recv(4096) == b"":
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import grpc
    import sw_agent
    with oaplib.Workdir("sw-receiver-conns") as wd:
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        col = oaplib.Collector(args.build_dir, wd, config(grpc_port, admin_port))
        col.validate()
        col.start(admin_port)
        target = "127.0.0.1:%d" % grpc_port
        idle, agent = [], None

        def refused():
            return sum(v for k, v in col.metrics().items()
                       if k.startswith("canopy_receiver_refused_total{") and 'reason="connections"' in k)
        try:
            wait_for("no connection open", lambda: col.metric("canopy_receiver_connections") == 0, 5)
            for _ in range(MAX):
                idle.append(socket.create_connection(("127.0.0.1", grpc_port), timeout=5))
            wait_for("%d connections open" % MAX, lambda: col.metric("canopy_receiver_connections") == MAX, 5)
            check(refused() == 0, "a connection under max_connections was refused")

            # The 21st: closed at once, counted, logged with its own address.
            t0 = time.time()
            extra = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
            extra_peer = "ipv4:127.0.0.1:%d" % extra.getsockname()[1]
            check(closed_within(extra, 0.5), "connection %d was not closed at once" % (MAX + 1))
            took = time.time() - t0
            extra.close()
            wait_for("the refusal counted", lambda: refused() == 1, 5)
            check(col.metric("canopy_receiver_connections_refused_total") == 1, "connections_refused_total")
            check("refused a connection from %s: connections: max_connections (%d) reached" % (extra_peer, MAX)
                  in col.log(), "no refusal log line naming %s:\n%s" % (extra_peer, col.log()[-2000:]))
            log("connection %d closed after %.3f s, counted and logged as %s" % (MAX + 1, took, extra_peer))

            # A SkyWalking agent's call while the slots are full: a gRPC error, not a hang.
            late = sw_agent.Agent(target, "shop", token=TOKEN)
            try:
                late.profile.getProfileTaskCommands(
                    late.s["profile"].ProfileTaskCommandQuery(service="shop", serviceInstance=late.instance,
                                                              lastCommandTime=-1),
                    metadata=late.md(), timeout=5)
                check(False, "a call was served past max_connections")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE, "past max_connections: %s" % e.code())
            finally:
                late.close()
            check(refused() >= 2, "the agent's refused connection not counted")
            check(col.metric("canopy_receiver_connections") == MAX, "open connections gauge")
            log("an agent's call past max_connections: UNAVAILABLE, counted")

            # Some idle ones go: a good agent is served.
            for sk in idle[:5]:
                sk.close()
            idle = idle[5:]
            wait_for("5 slots free", lambda: col.metric("canopy_receiver_connections") == MAX - 5, 5)
            agent = sw_agent.Agent(target, "shop", token=TOKEN)
            cmds = agent.query_commands()
            check([c["TaskId"] for c in cmds] == ["task-gate"], "commands: %r" % cmds)
            now = int(time.time() * 1000)
            agent.collect([("task-gate", "seg-1", i, now + i, ["app.py:main", "db.py:query"]) for i in range(5)])
            wait_for("5 snapshots accepted", lambda: col.metric("canopy_receiver_accepted_snapshots_total") == 5, 5)
            log("after 5 idle connections closed: a good agent's commands and snapshots served")

            # The rest never speak: gRPC's handshake_timeout (3 s) ends them, the gate closes the agents' side.
            t0 = time.time()
            still = [sk for sk in idle if not closed_within(sk, max(0.1, 6 - (time.time() - t0)))]
            check(not still, "%d idle connections still open 6 s on (handshake_timeout 3s)" % len(still))
            for sk in idle:
                sk.close()
            idle = []
            wait_for("only the agent's connection open",
                     lambda: col.metric("canopy_receiver_connections") == 1, 5)
            log("idle connections closed by handshake_timeout after %.1f s; slots freed" % (time.time() - t0))
            before = refused()
            for _ in range(MAX - 1):
                idle.append(socket.create_connection(("127.0.0.1", grpc_port), timeout=5))
            wait_for("%d open again" % MAX, lambda: col.metric("canopy_receiver_connections") == MAX, 5)
            check(refused() == before, "a freed slot was refused")
            check(agent.query_commands() == [], "the agent on its open connection")
            for sk in idle:
                sk.close()
            idle = []
            wait_for("slots freed", lambda: col.metric("canopy_receiver_connections") == 1, 5)

            # A call refused on a connection of ours: the log names our address, not the gate's.
            sk = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
            ours = "ipv4:127.0.0.1:%d" % sk.getsockname()[1]
            headers = b"".join(hpack_literal(k, v) for k, v in (
                (":method", "POST"), (":scheme", "http"), (":path", "/skywalking.v3.ProfileTask/getProfileTaskCommands"),
                (":authority", target), ("content-type", "application/grpc"), ("te", "trailers"),
                ("authentication", "wrong")))
            sk.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"") + h2_frame(1, 5, 1, headers))
            seen = h2_replies(sk, 3)
            sk.close()
            check({"END_STREAM", "RST_STREAM"} & seen, "no reply to a wrong token: %r" % seen)
            wait_for("the wrong token counted", lambda: sum(
                v for k, v in col.metrics().items()
                if k.startswith("canopy_receiver_refused_total{") and 'reason="unauthenticated"' in k) == 1, 5)
            check("refused a call from %s: unauthenticated" % ours in col.log(),
                  "the refused call is not logged with %s:\n%s" % (ours, col.log()[-2000:]))
            log("a refused call is logged with the agent's address %s" % ours)
        finally:
            for sk in idle:
                sk.close()
            if agent:
                agent.close()
            rc = col.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
