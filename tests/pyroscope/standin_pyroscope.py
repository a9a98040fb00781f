#!/usr/bin/python3
"""A stand-in Grafana Pyroscope ingest server, written from the API text
(docs/sources/configure-server/about-server-api.md and
pkg/ingester/pyroscope/ingest_handler.go in grafana/pyroscope):

  POST /ingest?name=<app>{k=v,...}&from=<unix s>&until=<unix s>&format=pprof
  body: a pprof profile.proto (gzipped or not); X-Scope-OrgID for tenants.

It parses `name` as Pyroscope's labelset parser does (app name, then
comma-separated key=value up to '}'), decodes the pprof with stubs generated
from proto/pprof/profile.proto, names the profile type as Pyroscope would
(`wall` when a sample type is wall), and keeps every push for the tests.

Knobs, settable while it runs: auth (("basic", user, password) or
("bearer", token)) answered with 401 otherwise; slow_s (sleep per request);
status (force an answer code). stop() and start() on the same port model a
server that goes away and comes back."""
import base64
import gzip
import http.server
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"


def profile_stubs(workdir):
    """profile_pb2 generated from proto/pprof/profile.proto with grpc_tools (python3-grpc-tools)."""
    out = os.path.join(workdir, "stubs")
    os.makedirs(out, exist_ok=True)
    r = subprocess.run([PY, "-m", "grpc_tools.protoc", "-I", os.path.join(REPO, "proto"), "--python_out=" + out,
                        "pprof/profile.proto"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("protoc failed:\n%s" % r.stderr)
    if out not in sys.path:
        sys.path.insert(0, out)
    from pprof import profile_pb2
    return profile_pb2


def parse_name(name):
    """Pyroscope's labelset.Parse: 'app{k=v,k2=v2}' -> (app, {k: v})."""
    app, _, rest = name.partition("{")
    labels = {}
    key, value, in_value = "", "", False
    for ch in rest:
        if not in_value:
            if ch == "}":
                break
            if ch == "=":
                in_value, value = True, ""
            else:
                key += ch
        elif ch in ",}":
            labels[key.strip()] = value.strip()
            key, in_value = "", False
            if ch == "}":
                break
        else:
            value += ch
    return app.strip(), labels


def metric_name(prof):
    """The profile type Pyroscope files a pprof under (pkg/og/convert/pprof: a wall sample type wins)."""
    types = [prof.string_table[st.type] for st in prof.sample_type]
    if "wall" in types:
        return "wall"
    if any("cpu" in t or t == "samples" for t in types):
        return "process_cpu"  # "samples" is displayed as cpu by Pyroscope's default mapping
    return types[-1] if types else ""


class Push:
    """One accepted /ingest request, decoded."""

    def __init__(self, query, headers, body, profile_pb2, arrived):
        self.arrived = arrived
        self.query = query
        self.app, self.labels = parse_name(query.get("name", ""))
        self.from_s = int(query["from"])
        self.until_s = int(query["until"])
        self.format = query.get("format")
        self.headers = headers
        self.raw = body
        data = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        p = profile_pb2.Profile()
        p.ParseFromString(data)
        self.profile = p
        s = p.string_table
        self.sample_types = [(s[st.type], s[st.unit]) for st in p.sample_type]
        self.period_type = (s[p.period_type.type], s[p.period_type.unit]) if p.HasField("period_type") else None
        self.metric = metric_name(p)
        self.totals = [sum(smp.value[i] for smp in p.sample) for i in range(len(p.sample_type))]
        funcs = {f.id: s[f.name] for f in p.function}
        locs = {l.id: [funcs.get(ln.function_id, "") for ln in l.line] for l in p.location}
        self.functions = {name for names in locs.values() for name in names}
        self.locations = locs

    @property
    def samples(self):
        return self.totals[0] if self.totals else 0

    def key(self):
        return (self.labels.get("task_id"), self.labels.get("endpoint"), self.labels.get("service_name"),
                self.labels.get("mode"))


class Standin:
    def __init__(self, workdir, port=0, auth=None, slow_s=0.0, tenant=None, tls=None):
        # tls: {"cert", "key", "client_ca"}: HTTPS, asking for a client certificate signed by client_ca.
        self.tls = tls
        self.profile_pb2 = profile_stubs(workdir)
        self.workdir = workdir
        self.port = port
        self.auth = auth
        self.slow_s = slow_s
        self.status = None
        self.tenant = tenant
        self.lock = threading.Lock()
        self.pushes = []
        self.requests = 0
        self.refused = []  # (status, query) of the requests answered with an error
        self.server = None
        self.saved = 0

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def _authorized(self, headers):
        if not self.auth:
            return True
        got = headers.get("Authorization", "")
        if self.auth[0] == "basic":
            want = "Basic " + base64.b64encode(("%s:%s" % (self.auth[1], self.auth[2])).encode()).decode()
        else:
            want = "Bearer " + self.auth[1]
        return got == want

    def start(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Pyroscope's Go server does

            def log_message(self, fmt, *args):
                pass

            def answer(self, status, text):
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                u = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                with standin.lock:
                    standin.requests += 1
                if standin.slow_s:
                    time.sleep(standin.slow_s)
                if u.path != "/ingest":
                    return self.answer(404, "404 page not found\n")
                if not standin._authorized(self.headers):
                    with standin.lock:
                        standin.refused.append((401, query))
                    return self.answer(401, "authentication required: invalid credentials\n")
                if standin.status:
                    with standin.lock:
                        standin.refused.append((standin.status, query))
                    return self.answer(standin.status, "forced answer\n")
                if standin.tenant and self.headers.get("X-Scope-OrgID") != standin.tenant:
                    return self.answer(401, "no org id\n")
                try:
                    push = Push(query, dict(self.headers), body, standin.profile_pb2, time.time())
                except Exception as e:  # noqa: BLE001 - a bad push is the exporter's bug: 400 as Pyroscope
                    with standin.lock:
                        standin.refused.append((400, query))
                    return self.answer(400, "failed to parse request metadata: %s\n" % e)
                with standin.lock:
                    standin.pushes.append(push)
                self.answer(200, "")

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True

            # Open keep-alive connections are closed by stop(), or a "down" server would go on answering on them.
            def process_request(self, request, client_address):
                with standin.lock:
                    standin.connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request):
                with standin.lock:
                    standin.connections.discard(request)
                super().shutdown_request(request)

        self.connections = set()
        self.server = Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls["cert"], self.tls["key"])
            if self.tls.get("client_ca"):
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.tls["client_ca"])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            with self.lock:
                conns, self.connections = list(self.connections), set()
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.server = None

    def all_pushes(self):
        with self.lock:
            return list(self.pushes)

    def save_raw(self, push):
        """Writes a push's body to a file (for `go tool pprof`); returns the path."""
        self.saved += 1
        path = os.path.join(self.workdir, "push-%d.pb.gz" % self.saved)
        with open(path, "wb") as f:
            f.write(push.raw)
        return path


if __name__ == "__main__":
    import tempfile
    s = Standin(tempfile.mkdtemp(), port=int(sys.argv[1]) if len(sys.argv) > 1 else 4040).start()
    print("stand-in Pyroscope on %s" % s.url, flush=True)
    try:
        while True:
            time.sleep(5)
            print("%d pushes" % len(s.all_pushes()), flush=True)
    except KeyboardInterrupt:
        s.stop()
