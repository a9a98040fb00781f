#!/usr/bin/python3
"""`canopy validate` on receivers.skywalking: a good config passes; plaintext
gRPC on a non-loopback address without allow_insecure, a listen that is not
host:port, TLS files missing or not PEM, a token gRPC cannot carry, an
`upstream` that is not a skywalking exporter and unknown or out-of-range
options are reported as FILE:LINE:COL: message."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check  # noqa: E402

HEAD = "receivers:\n  skywalking:\n"
TAIL = """exporters:
  discard:
service:
  pipelines:
    profiles:
      receivers: [skywalking]
      exporters: [discard]
"""

CASES = [
    # (receiver body, expected substrings; empty = valid)
    ("    listen: 127.0.0.1:11800\n    authentication: tok\n    max_message_size: 1MiB\n", []),
    ("    listen: \"[::1]:11800\"\n", []),
    ("    listen: 0.0.0.0:11800\n    allow_insecure: true\n", []),
    ("    listen: 0.0.0.0:11800\n", ["3:13: listen: refusing plaintext gRPC on non-loopback 0.0.0.0:11800"]),
    ("    listen: 0.0.0.0:11800\n    tls:\n      cert_file: %(cert)s\n      key_file: %(key)s\n", []),
    ("    tls:\n      cert_file: %(cert)s\n      client_auth: required\n",
     ["tls: the server needs both cert_file and key_file", "tls.client_auth: required needs tls.ca_file"]),
    ("    tls:\n      cert_file: %(key)s\n      key_file: /nonexistent/k.pem\n",
     ['holds no PEM "CERTIFICATE" block', "tls.key_file: cannot read /nonexistent/k.pem"]),
    ("    listen: localhost\n", ["3:13: listen: localhost is not host:port"]),
    ("    authentication: \"a\\tb\"\n", ["authentication contains a character gRPC metadata cannot carry"]),
    ("    max_message_size: 10\n    colour: red\n", ["max_message_size", 'unknown option "colour"']),
    ("    upstream: discard\n",
     ['3:15: receivers::skywalking: upstream references exporter "discard" which is not a configured skywalking '
      'exporter']),
    ("    upstream: skywalking/oap\n    max_passthrough_calls: 0\n", ["max_passthrough_calls"]),
    ("    upstream: skywalking/oap\n    max_passthrough_calls: 50\n    upstream_connect_timeout: 500ms\n", []),
]
# The exporter an `upstream` names; unused by the pipeline, as a pass-through-only OAP would be.
UPSTREAM = "  skywalking/oap:\n    endpoints: [\"127.0.0.1:11800\"]\n"


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    canopy = os.path.join(args.build_dir, "bin", "canopy")
    with oaplib.Workdir("sw-receiver-config") as wd:
        ca = oaplib.make_ca(wd)
        files = {"cert": ca["server_cert"], "key": ca["server_key"]}
        for i, (body, expect) in enumerate(CASES):
            path = os.path.join(wd, "case%d.yaml" % i)
            with open(path, "w") as f:
                f.write(HEAD + body % files + TAIL.replace("  discard:\n", "  discard:\n" + UPSTREAM))
            r = subprocess.run([canopy, "validate", "-c", path], capture_output=True, text=True, timeout=30)
            if not expect:
                check(r.returncode == 0, "case %d should be valid:\n%s" % (i, r.stderr))
                continue
            check(r.returncode != 0, "case %d should be refused" % i)
            for e in expect:
                check(e in r.stderr, "case %d: %r not in:\n%s" % (i, e, r.stderr))
            for line in r.stderr.strip().splitlines():
                check(line.startswith(path + ":"), "case %d: not FILE:LINE:COL: %r" % (i, line))
        r = subprocess.run([canopy, "components"], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and "SkyWalking agents over gRPC" in r.stdout, "components:\n%s" % r.stdout)


if __name__ == "__main__":
    oaplib.run_test(main)
