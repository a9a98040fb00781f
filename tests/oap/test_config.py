#!/usr/bin/python3
"""`canopy validate` on skywalking exporter and tasks.skywalking configs:
a good one passes; bad values are reported as FILE:LINE:COL: message."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402

HEAD = """receivers:
  nng:
    listen: ["ipc:///tmp/canopy-sw-validate.sock"]
exporters:
  skywalking:
"""
TAIL = """service:
  pipelines:
    profiles:
      receivers: [nng]
      exporters: [skywalking]
"""

CASES = [
    # (exporter body, tasks section, expected substrings; empty = valid)
    ("    endpoints: [oap-1:11800, \"[::1]:11800\", \"dns:///oap:11800\"]\n"
     "    authentication: tok\n    timeout: 5s\n    max_snapshots_per_call: 100\n",
     "tasks:\n  skywalking:\n    exporter: skywalking\n    poll_interval: 5s\n", []),
    ("    endpoints:\n      - oap\n      - \"oap:99999\"\n",
     "", ['7:9: endpoint "oap" is not host:port', '8:9: endpoint "oap:99999" has no valid port']),
    ("    endpoints: [oap:11800]\n    tls:\n      cert_file: /nonexistent/c.pem\n",
     "", ["cert_file and key_file go together", "tls.cert_file: cannot read /nonexistent/c.pem"]),
    ("    endpoints: [oap:11800]\n    authentication: \"a\\tb\"\n", "", ["authentication contains a control character"]),
    ("    endpoints: [oap:11800]\n    timeout: 0s\n", "", ["timeout must be between"]),
    ("    endpoints: [oap:11800]\n",
     "tasks:\n  skywalking:\n    exporter: skywalking\n    poll_interval: fast\n    colour: red\n",
     ['poll_interval: "fast" is not a duration', 'unknown option "colour"']),
    ("    endpoints: [oap:11800]\n", "tasks:\n  skywalking:\n    exporter: nope\n",
     ['references exporter "nope"']),
]


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    canopy = os.path.join(args.build_dir, "bin", "canopy")
    with oaplib.Workdir("sw-config") as wd:
        for i, (body, tasks, expect) in enumerate(CASES):
            path = os.path.join(wd, "case%d.yaml" % i)
            with open(path, "w") as f:
                f.write(HEAD + body + TAIL + tasks)
            r = subprocess.run([canopy, "validate", "-c", path], capture_output=True, text=True, timeout=30)
            if not expect:
                check(r.returncode == 0, "case %d should be valid:\n%s" % (i, r.stderr))
                continue
            check(r.returncode != 0, "case %d should be refused" % i)
            for e in expect:
                check(e in r.stderr, "case %d: %r not in:\n%s" % (i, e, r.stderr))
            for line in r.stderr.strip().splitlines():
                check(line.startswith(path + ":"), "case %d: not FILE:LINE:COL: %r" % (i, line))
        log("%d configs validated as expected" % len(CASES))


if __name__ == "__main__":
    oaplib.run_test(main)
