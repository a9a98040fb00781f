#!/usr/bin/python3
"""Credentials and config of the pyroscope exporter:
  - `canopy validate` reports bad settings as FILE:LINE:COL (a label name
    Pyroscope refuses, two kinds of credentials, a non-http url);
  - a wrong bearer token (from bearer_token_file): every push gets 401, is
    counted as a 4xx failure and dropped with the server's answer in the log,
    and is never sent again (requests == profiles: no retry storm);
  - basic auth from ${env:...} and tenant_id: the server sees the right
    Authorization and X-Scope-OrgID, and takes every push."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402


def validate_errors(args, wd):
    bad = """receivers:
  nng:
    listen: ["ipc://%s/v.sock"]
exporters:
  pyroscope:
    url: "pyroscope:4040"
    bearer_token: abc
    basic_auth:
      username: u
    labels:
      "bad-name": x
service:
  pipelines:
    profiles:
      receivers: [nng]
      exporters: [pyroscope]
""" % wd
    path = os.path.join(wd, "bad.yaml")
    with open(path, "w") as f:
        f.write(bad)
    r = subprocess.run([os.path.join(args.build_dir, "bin", "canopy"), "validate", "-c", path],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode != 0, "validate accepted a bad pyroscope config")
    for line, what in ((6, "must start with http://"), (11, "bad-name"), (7, "set one of them")):
        check(any(l.startswith("%s:%d:" % (path, line)) and what in l for l in r.stderr.splitlines()),
              "validate did not report %r at line %d:\n%s" % (what, line, r.stderr))


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("pyroscope-auth") as wd:
        validate_errors(args, wd)
        log("validate reports bad settings with FILE:LINE:COL")
        env = oaplib.Env(args, wd)
        server = pyrolib.standin_pyroscope.Standin(wd, auth=("bearer", "right-token")).start()
        try:
            token = os.path.join(wd, "token")
            with open(token, "w") as f:
                f.write("wrong-token\n")
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(
                server.url, extra='    bearer_token_file: "%s"\n' % token + oaplib.retry_yaml() + "\n")},
                tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"), name="wrong")
            canopy.start(env.admin_port)
            sent = int(env.loadgen(agents=2, batches=5, batch_size=50, depth=6, tasks=1)["snapshots"])
            oaplib.wait_metric(canopy, "canopy_pyroscope_dropped_snapshots_total", lambda v: v >= sent,
                               "the refused snapshots counted", 20)
            time.sleep(2 * pyrolib.INTERVAL_S)  # room for any retry that should not happen
            fails = canopy.metric("canopy_pyroscope_push_failures_total")
            dropped = canopy.metric("canopy_pyroscope_dropped_profiles_total")
            check(fails >= 1 and fails == dropped, "4xx failures %r vs dropped profiles %r" % (fails, dropped))
            check(server.requests == fails, "%d requests for %d refused profiles: refused pushes were retried"
                  % (server.requests, fails))
            check(all(status == 401 for status, _ in server.refused), "answers: %r" % server.refused[:3])
            check(not server.all_pushes(), "a push got through with the wrong token")
            check("HTTP 401: authentication required" in canopy.log(), "the log lacks the server's answer")
            canopy.stop()
            log("wrong token: %d pushes refused with 401, each sent once, counted and logged" % fails)

            server.auth = ("basic", "canopy", "s3cret")
            server.tenant = "team-a"
            os.environ["PYRO_TEST_PASSWORD"] = "s3cret"
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(
                server.url, extra='    tenant_id: team-a\n    basic_auth:\n      username: canopy\n'
                                  '      password: ${env:PYRO_TEST_PASSWORD}\n')},
                tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"), name="right")
            canopy.start(env.admin_port)
            sent = int(env.loadgen(agents=2, batches=5, batch_size=50, depth=6, tasks=1)["snapshots"])
            oaplib.wait_for("every snapshot pushed with basic auth",
                            lambda: sum(p.samples for p in server.all_pushes()) == sent, 20)
            for p in server.all_pushes():
                check(p.headers.get("X-Scope-OrgID") == "team-a", "X-Scope-OrgID %r" % p.headers.get("X-Scope-OrgID"))
            log("basic auth and tenant_id: %d snapshots in %d pushes" % (sent, len(server.all_pushes())))
        finally:
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
