#!/usr/bin/python3
"""HTTPS with a private CA (tls.ca_file) and a client certificate (tls.cert_file,
tls.key_file) that the server requires: every snapshot is pushed. Without the
client certificate the handshake fails: a transport failure, counted and
retried, never a push."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyrolib  # noqa: E402
from pyrolib import check, log, oaplib  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("pyroscope-tls") as wd:
        certs = oaplib.make_ca(wd, with_client=True)
        env = oaplib.Env(args, wd)
        server = pyrolib.standin_pyroscope.Standin(
            wd, tls={"cert": certs["server_cert"], "key": certs["server_key"], "client_ca": certs["ca"]}).start()
        try:
            tls = '    tls:\n      ca_file: "%s"\n' % certs["ca"]
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(server.url, extra=tls)},
                                   tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"), name="nocert")
            canopy.start(env.admin_port)
            env.loadgen(agents=1, batches=4, batch_size=50, depth=6, tasks=1)
            oaplib.wait_metric(canopy, "canopy_pyroscope_push_failures_total", lambda v: v >= 1,
                               "a failed handshake counted", 20)
            check(not server.all_pushes(), "a push got through without a client certificate")
            canopy.stop()
            log("no client certificate: the handshake fails, counted as a transport failure")

            tls += '      cert_file: "%s"\n      key_file: "%s"\n' % (certs["client_cert"], certs["client_key"])
            canopy = env.collector({"pyroscope": pyrolib.pyroscope_yaml(server.url, extra=tls)},
                                   tasks=pyrolib.static_task("task-0", "loadgen", "/checkout"), name="mtls")
            canopy.validate()
            canopy.start(env.admin_port)
            sent = int(env.loadgen(agents=2, batches=4, batch_size=50, depth=6, tasks=1)["snapshots"])
            oaplib.wait_for("every snapshot pushed over mutual TLS",
                            lambda: sum(p.samples for p in server.all_pushes()) == sent, 20, interval=0.3)
            time.sleep(0.5)
            log("mutual TLS: %d snapshots in %d pushes" % (sent, len(server.all_pushes())))
        finally:
            env.close()
            server.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
