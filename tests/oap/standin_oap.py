#!/usr/bin/python3
"""Stand-in SkyWalking OAP for canopy's tests and benchmarks.

A real gRPC server (Debian's python3-grpcio) implementing
skywalking.v3.ProfileTask, with stubs generated at start-up by
python3-grpc-tools from proto/skywalking/v3 into a temporary directory
(nothing generated is committed). It behaves like the OAP where canopy can
tell the difference:

  * getProfileTaskCommands returns the service's running tasks created after
    lastCommandTime, as ProfileTaskQuery commands, and logs which instance was
    notified of which task (the OAP's per-instance task log);
  * collectSnapshot stores each snapshot under taskId + traceSegmentId +
    sequence, so a repeat overwrites; raw receipts are counted too, so tests
    can see duplicates;
  * reportTaskFinish is recorded per instance;
  * the optional `authentication` token is checked on every call
    (UNAUTHENTICATED on mismatch); TLS (and mutual TLS) from PEM files.

A small HTTP JSON control API on a second loopback port drives it:

  GET  /health                   {"ok": true}
  POST /tasks                    create a task: {"service", "endpointName",
                                 "duration" (min), "minDurationThreshold" (ms),
                                 "dumpPeriod" (ms), "maxSamplingCount",
                                 "startTime" (epoch ms), "taskId"}; all optional
                                 but service
  GET  /tasks                    the tasks, with their notified instances
  GET  /stats                    counters, distinct connections (peers)
  GET  /snapshots[?taskId=T]     stored snapshots
  GET  /segments[?taskId=T]      per segment: count, has sequence 0, dense
  GET  /finish                   finish reports
  GET  /queries                  getProfileTaskCommands calls received
  GET  /raw                      every other service's calls (TraceSegmentReportService,
                                 LogReportService, ManagementService, ... any method),
                                 as received: {"Service/method": [[hex message, ...] per
                                 call]}; answered with one empty message (an empty
                                 Commands), or as /mode says
  GET  /deadlines                those calls' remaining deadline at arrival (s, or
                                 null for none): {"Service/method": [...]}
  POST /mode                     {"mode": "ok"|"fail"|"hang", "code": "UNAVAILABLE",
                                 "methods": [...], "count": N, "after": K, "skip": S}
                                 fail/hang the next N calls (all when no count)
                                 of those methods (all when none), after letting
                                 S of them through; "after": fail a
                                 collectSnapshot stream after K messages
  POST /reset                    forget everything except the tasks

With --state-file the state is saved on SIGTERM/SIGINT and loaded at start,
so a test can stop the "OAP" for a while and restart it without losing what
it had acknowledged.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate_stubs(proto_dir):
    """Runs grpc_tools.protoc into a temp dir and puts it on sys.path."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="canopy-oap-stubs-")
    files = [os.path.join(proto_dir, "skywalking", "v3", f) for f in ("common.proto", "profile.proto")]
    rc = protoc.main(["grpc_tools.protoc", "-I" + proto_dir, "--python_out=" + out,
                      "--grpc_python_out=" + out] + files)
    if rc != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit("standin-oap: protoc failed (%d) on %s" % (rc, proto_dir))
    sys.path.insert(0, out)
    return out


def now_ms():
    return int(time.time() * 1000)


class State:
    """Everything the stand-in knows; one lock guards it all."""

    def __init__(self, token=None):
        self.lock = threading.Condition()
        self.token = token
        self.tasks = []            # dicts, creation order
        self.notified = {}         # taskId -> {instance: count}
        self.snapshots = {}        # (taskId, segment, sequence) -> {"time", "stack"}
        self.received = 0          # raw snapshots received, duplicates included
        self.duplicates = 0        # receipts whose key was already stored
        self.finish = []
        self.queries = []
        self.calls = {}            # method -> calls started
        self.calls_ok = {}         # method -> calls answered OK
        self.calls_failed = {}     # "method:CODE" -> n
        self.peers = {}            # peer -> first seen (epoch ms)
        self.peers_by_method = {}  # method -> set(peer)
        self.auth_failures = 0
        self.raw = {}              # "Service/method" -> [[hex message, ...] per call]
        self.deadlines = {}        # "Service/method" -> [seconds left at arrival, or None]
        self.mode = {"mode": "ok"}
        self.generation = 1        # +1 on every restart with --state-file

    # ---- persistence -----------------------------------------------------
    def dump(self, path):
        with self.lock:
            data = {
                "tasks": self.tasks,
                "notified": self.notified,
                "snapshots": [[k[0], k[1], k[2], v["time"], v["stack"]] for k, v in self.snapshots.items()],
                "received": self.received,
                "duplicates": self.duplicates,
                "finish": self.finish,
                "queries": self.queries,
                "calls": self.calls,
                "calls_ok": self.calls_ok,
                "calls_failed": self.calls_failed,
                "peers": self.peers,
                "peers_by_method": {m: sorted(p) for m, p in self.peers_by_method.items()},
                "auth_failures": self.auth_failures,
                "generation": self.generation,
            }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def load(self, path):
        with open(path) as f:
            data = json.load(f)
        self.tasks = data["tasks"]
        self.notified = data["notified"]
        self.snapshots = {(t, s, q): {"time": tm, "stack": st} for t, s, q, tm, st in data["snapshots"]}
        self.received = data["received"]
        self.duplicates = data["duplicates"]
        self.finish = data["finish"]
        self.queries = data["queries"]
        self.calls = data["calls"]
        self.calls_ok = data["calls_ok"]
        self.calls_failed = data["calls_failed"]
        self.peers = data["peers"]
        self.peers_by_method = {m: set(p) for m, p in data["peers_by_method"].items()}
        self.auth_failures = data["auth_failures"]
        self.generation = data["generation"] + 1

    # ---- summaries -------------------------------------------------------
    def stats(self):
        with self.lock:
            return {
                "generation": self.generation,
                "tasks": len(self.tasks),
                "snapshots_stored": len(self.snapshots),
                "snapshots_received": self.received,
                "duplicates": self.duplicates,
                "finish_reports": len(self.finish),
                "queries": len(self.queries),
                "calls": dict(self.calls),
                "calls_ok": dict(self.calls_ok),
                "calls_failed": dict(self.calls_failed),
                "connections": len(self.peers),
                "peers": sorted(self.peers),
                "connections_by_method": {m: len(p) for m, p in self.peers_by_method.items()},
                "auth_failures": self.auth_failures,
                "mode": dict(self.mode),
            }

    def segments(self, task_id=None):
        with self.lock:
            keys = [k for k in self.snapshots if task_id is None or k[0] == task_id]
        seqs = {}
        for t, s, q in keys:
            seqs.setdefault((t, s), []).append(q)
        out = {}
        bad = []
        for (t, s), qs in seqs.items():
            qs.sort()
            dense = qs == list(range(len(qs)))
            out.setdefault(t, {})[s] = {"count": len(qs), "has0": qs[0] == 0, "max": qs[-1], "dense": dense}
            if not dense:
                bad.append({"taskId": t, "segment": s, "first": qs[0], "max": qs[-1], "count": len(qs)})
        return {"tasks": out, "segments": len(seqs), "snapshots": len(keys), "not_dense": bad}


class Refuse(Exception):
    pass


def build_servicer(pb, pb_grpc, common_pb, grpc, state):
    codes = {c.name: c for c in grpc.StatusCode}

    class ProfileTask(pb_grpc.ProfileTaskServicer):
        def _enter(self, method, context):
            """Bookkeeping shared by every call; returns the streaming fail-after count."""
            peer = context.peer()
            md = dict(context.invocation_metadata())
            with state.lock:
                state.calls[method] = state.calls.get(method, 0) + 1
                state.peers.setdefault(peer, now_ms())
                state.peers_by_method.setdefault(method, set()).add(peer)
                if state.token is not None and md.get("authentication") != state.token:
                    state.auth_failures += 1
                    self._failed(method, "UNAUTHENTICATED")
                    refuse = ("UNAUTHENTICATED", "invalid authentication token")
                else:
                    refuse = None
            if refuse:
                context.abort(codes[refuse[0]], refuse[1])
            # Failure injection.
            while True:
                with state.lock:
                    m = state.mode
                    applies = m["mode"] != "ok" and (not m.get("methods") or method in m["methods"])
                    if not applies:
                        return None
                    if m["mode"] == "hang":
                        if not context.is_active():
                            return None
                        state.lock.wait(0.2)
                        continue
                    # fail, after letting `skip` matching calls through
                    if m.get("skip"):
                        m["skip"] -= 1
                        return None
                    if m.get("after") is not None and method == "collectSnapshot":
                        after = int(m["after"])
                    else:
                        after = None
                    if m.get("count") is not None:
                        m["count"] -= 1
                        if m["count"] <= 0:
                            state.mode = {"mode": "ok"}
                    code = m.get("code", "UNAVAILABLE")
                    if after is None:
                        self._failed(method, code)
                if after is not None:
                    return (code, after)
                context.abort(codes[code], "stand-in told to fail")

        def _failed(self, method, code):
            key = "%s:%s" % (method, code)
            state.calls_failed[key] = state.calls_failed.get(key, 0) + 1

        def _ok(self, method):
            with state.lock:
                state.calls_ok[method] = state.calls_ok.get(method, 0) + 1

        def getProfileTaskCommands(self, request, context):
            self._enter("getProfileTaskCommands", context)
            t_now = now_ms()
            cmds = common_pb.Commands()
            returned = []
            with state.lock:
                for t in state.tasks:
                    if t["service"] != request.service:
                        continue
                    if t["createTime"] <= request.lastCommandTime:
                        continue
                    if t["startTime"] + t["duration"] * 60000 <= t_now:
                        continue
                    c = cmds.commands.add()
                    c.command = "ProfileTaskQuery"
                    for k, v in (("SerialNumber", t["serialNumber"]), ("TaskId", t["taskId"]),
                                 ("EndpointName", t["endpointName"]), ("Duration", t["duration"]),
                                 ("MinDurationThreshold", t["minDurationThreshold"]),
                                 ("DumpPeriod", t["dumpPeriod"]), ("MaxSamplingCount", t["maxSamplingCount"]),
                                 ("StartTime", t["startTime"]), ("CreateTime", t["createTime"])):
                        kv = c.args.add()
                        kv.key = k
                        kv.value = str(v)
                    returned.append(t["taskId"])
                    per = state.notified.setdefault(t["taskId"], {})
                    per[request.serviceInstance] = per.get(request.serviceInstance, 0) + 1
                state.queries.append({"service": request.service, "serviceInstance": request.serviceInstance,
                                      "lastCommandTime": request.lastCommandTime, "peer": context.peer(),
                                      "time": t_now, "returned": returned})
            self._ok("getProfileTaskCommands")
            return cmds

        def collectSnapshot(self, request_iterator, context):
            fail_after = self._enter("collectSnapshot", context)
            n = 0
            for snap in request_iterator:
                if fail_after is not None and n >= fail_after[1]:
                    with state.lock:
                        self._failed("collectSnapshot", fail_after[0])
                    context.abort(codes[fail_after[0]], "stand-in told to fail after %d messages" % n)
                key = (snap.taskId, snap.traceSegmentId, snap.sequence)
                with state.lock:
                    state.received += 1
                    if key in state.snapshots:
                        state.duplicates += 1
                    state.snapshots[key] = {"time": snap.time, "stack": list(snap.stack.codeSignatures)}
                n += 1
            self._ok("collectSnapshot")
            return common_pb.Commands()

        def reportTaskFinish(self, request, context):
            self._enter("reportTaskFinish", context)
            with state.lock:
                state.finish.append({"service": request.service, "serviceInstance": request.serviceInstance,
                                     "taskId": request.taskId, "peer": context.peer(), "time": now_ms()})
            self._ok("reportTaskFinish")
            return common_pb.Commands()

        def goProfileReport(self, request_iterator, context):
            self._enter("goProfileReport", context)
            for _ in request_iterator:
                pass
            return common_pb.Commands()

    return ProfileTask()


def build_raw_handler(grpc, state, servicer):
    """Every service but ProfileTask, as bytes: no (de)serializers, so what is
    recorded is exactly what came over the wire."""

    class Raw(grpc.GenericRpcHandler):
        def service(self, details):
            path = details.method
            if path.startswith("/skywalking.v3.ProfileTask/"):
                return None
            name = path.rsplit("/", 2)
            name = (name[-2].replace("skywalking.v3.", "") + "/" + name[-1]) if len(name) >= 2 else path

            def handle(request_iterator, context):
                left = context.time_remaining()
                with state.lock:
                    state.deadlines.setdefault(name, []).append(left)
                servicer._enter(name, context)
                msgs = []
                with state.lock:
                    state.raw.setdefault(name, []).append(msgs)
                for m in request_iterator:
                    with state.lock:
                        msgs.append(m.hex())
                servicer._ok(name)
                yield b""
            return grpc.stream_stream_rpc_method_handler(handle)

    return Raw()


def make_control_handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: tests read stdout
            pass

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self):
            n = int(self.headers.get("Content-Length") or 0)
            if not n:
                return {}
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            u = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/health":
                return self._send(200, {"ok": True})
            if u.path == "/stats":
                return self._send(200, state.stats())
            if u.path == "/tasks":
                with state.lock:
                    out = [dict(t, notified=state.notified.get(t["taskId"], {})) for t in state.tasks]
                return self._send(200, out)
            if u.path == "/snapshots":
                tid = q.get("taskId")
                with state.lock:
                    out = [{"taskId": k[0], "traceSegmentId": k[1], "sequence": k[2], "time": v["time"],
                            "stack": v["stack"]}
                           for k, v in state.snapshots.items() if tid is None or k[0] == tid]
                return self._send(200, out)
            if u.path == "/segments":
                return self._send(200, state.segments(q.get("taskId")))
            if u.path == "/finish":
                with state.lock:
                    return self._send(200, list(state.finish))
            if u.path == "/queries":
                with state.lock:
                    return self._send(200, list(state.queries))
            if u.path == "/deadlines":
                with state.lock:
                    return self._send(200, dict(state.deadlines))
            if u.path == "/raw":
                with state.lock:
                    return self._send(200, {m: [list(c) for c in calls] for m, calls in state.raw.items()})
            return self._send(404, {"error": "no such path " + u.path})

        def do_POST(self):
            u = urlparse(self.path)
            try:
                body = self._body()
            except ValueError as e:
                return self._send(400, {"error": "bad JSON: %s" % e})
            if u.path == "/tasks":
                if not body.get("service"):
                    return self._send(400, {"error": "service is required"})
                t_now = now_ms()
                with state.lock:
                    # Distinct CreateTimes, as the OAP's cursor logic needs.
                    last = max([t["createTime"] for t in state.tasks] + [0])
                    created = max(t_now, last + 1)
                    task = {
                        "taskId": body.get("taskId") or uuid.uuid4().hex,
                        "service": body["service"],
                        "endpointName": body.get("endpointName", "/"),
                        "duration": int(body.get("duration", 1)),
                        "minDurationThreshold": int(body.get("minDurationThreshold", 0)),
                        "dumpPeriod": int(body.get("dumpPeriod", 10)),
                        "maxSamplingCount": int(body.get("maxSamplingCount", 5)),
                        "startTime": int(body.get("startTime", created)),
                        "createTime": created,
                    }
                    task["serialNumber"] = body.get("serialNumber") or uuid.uuid4().hex
                    state.tasks.append(task)
                return self._send(200, task)
            if u.path == "/mode":
                mode = body.get("mode", "ok")
                if mode not in ("ok", "fail", "hang"):
                    return self._send(400, {"error": "mode is ok, fail or hang"})
                code = body.get("code", "UNAVAILABLE")
                import grpc
                if code not in grpc.StatusCode.__members__:
                    return self._send(400, {"error": "unknown status code " + code})
                with state.lock:
                    state.mode = {"mode": mode, "code": code, "methods": body.get("methods"),
                                  "count": body.get("count"), "after": body.get("after"),
                                  "skip": body.get("skip")}
                    state.lock.notify_all()
                return self._send(200, state.mode)
            if u.path == "/reset":
                with state.lock:
                    state.snapshots.clear()
                    state.received = state.duplicates = state.auth_failures = 0
                    state.finish.clear()
                    state.queries.clear()
                    state.calls.clear()
                    state.calls_ok.clear()
                    state.calls_failed.clear()
                    state.peers.clear()
                    state.peers_by_method.clear()
                    state.notified.clear()
                    state.raw.clear()
                    state.deadlines.clear()
                return self._send(200, {"ok": True})
            return self._send(404, {"error": "no such path " + u.path})

    return Handler


def main(argv=None):
    ap = argparse.ArgumentParser(description="Stand-in SkyWalking OAP (skywalking.v3.ProfileTask) for canopy tests.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--grpc-port", type=int, required=True, help="gRPC port; 0 picks a free one")
    ap.add_argument("--control-port", type=int, required=True, help="HTTP control API port; 0 picks a free one")
    ap.add_argument("--token", help="require this `authentication` metadata on every call")
    ap.add_argument("--tls-cert", help="server certificate chain (PEM); enables TLS")
    ap.add_argument("--tls-key", help="server private key (PEM)")
    ap.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    ap.add_argument("--state-file", help="save state here on SIGTERM/SIGINT; load it at start")
    ap.add_argument("--ready-file", help="write {grpc_port, control_port, pid} here once serving")
    ap.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="root of skywalking/v3/*.proto")
    ap.add_argument("--workers", type=int, default=64, help="gRPC handler threads (hung calls hold one each)")
    args = ap.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    stub_dir = generate_stubs(args.proto_dir)
    try:
        import grpc
        from skywalking.v3 import common_pb2, profile_pb2, profile_pb2_grpc

        state = State(args.token)
        if args.state_file and os.path.exists(args.state_file):
            state.load(args.state_file)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                             maximum_concurrent_rpcs=None)
        servicer = build_servicer(profile_pb2, profile_pb2_grpc, common_pb2, grpc, state)
        profile_pb2_grpc.add_ProfileTaskServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers((build_raw_handler(grpc, state, servicer),))
        addr = "%s:%d" % (args.host, args.grpc_port)
        if args.tls_cert:
            with open(args.tls_key, "rb") as f:
                key = f.read()
            with open(args.tls_cert, "rb") as f:
                cert = f.read()
            client_ca = None
            if args.tls_client_ca:
                with open(args.tls_client_ca, "rb") as f:
                    client_ca = f.read()
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            port = server.add_secure_port(addr, creds)
        else:
            port = server.add_insecure_port(addr)
        if port == 0:
            raise SystemExit("standin-oap: cannot listen on %s" % addr)
        server.start()

        httpd = ThreadingHTTPServer((args.host, args.control_port), make_control_handler(state))
        httpd.daemon_threads = True
        cport = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

        done = threading.Event()

        def on_signal(signum, frame):
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"grpc_port": port, "control_port": cport, "pid": os.getpid()}, f)
            os.replace(tmp, args.ready_file)
        print("standin-oap: grpc=%s:%d control=http://%s:%d tls=%s token=%s generation=%d" % (
            args.host, port, args.host, cport, "on" if args.tls_cert else "off",
            "on" if args.token else "off", state.generation), flush=True)

        while not done.wait(0.5):
            pass
        # Stop answering first: calls cut here were never acknowledged, so the
        # client retries them; everything acknowledged is in state and saved.
        server.stop(None).wait(5)
        httpd.shutdown()
        if args.state_file:
            state.dump(args.state_file)
        s = state.stats()
        print("standin-oap: stopped; snapshots stored=%d received=%d connections=%d" % (
            s["snapshots_stored"], s["snapshots_received"], s["connections"]), flush=True)
    finally:
        shutil.rmtree(stub_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
