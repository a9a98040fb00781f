#!/usr/bin/python3
"""TLS with a self-signed CA made now with openssl: the stand-in serves with
a certificate for 127.0.0.1 and requires a client certificate (mutual TLS);
canopy verifies it with tls.ca_file and presents cert_file/key_file. Every
snapshot arrives. A collector that trusts another CA is refused."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy", "canopy-loadgen")
    with oaplib.Workdir("sw-tls") as wd:
        pki = os.path.join(wd, "pki")
        os.makedirs(pki)
        ca = oaplib.make_ca(pki, with_client=True)
        other = os.path.join(wd, "other")
        os.makedirs(other)
        other_ca = oaplib.make_ca(other)
        env = oaplib.Env(args, wd)
        oap = oaplib.Standin(wd, tls_cert=ca["server_cert"], tls_key=ca["server_key"],
                             tls_client_ca=ca["ca"], token="t0k").start()
        try:
            tls = {"ca_file": ca["ca"], "cert_file": ca["client_cert"], "key_file": ca["client_key"]}
            canopy = env.collector({"skywalking": oaplib.sw_exporter_yaml([oap.target], token="t0k", tls=tls)})
            canopy.validate()
            canopy.start(env.admin_port)
            total = int(env.loadgen(agents=2, batches=10, batch_size=50, depth=8, tasks=2)["snapshots"])
            oaplib.wait_for("all %d snapshots over TLS" % total, lambda: oap.stats()["snapshots_stored"] >= total, 30)
            oaplib.check_segments(oap, expected=total)
            check(oap.stats()["connections"] == 1, "TLS: more than one connection")
            check("TLS" in canopy.log(), "canopy does not say it uses TLS")
            canopy.stop()
            log("mutual TLS: %d snapshots delivered" % total)

            # Trusting the wrong CA: the handshake fails, the chunk is retried, nothing arrives.
            before = oap.stats()["snapshots_stored"]
            wrong = env.collector({"skywalking": oaplib.sw_exporter_yaml(
                [oap.target], token="t0k", timeout="2s", tls={"ca_file": other_ca["ca"]})
                + "\n" + oaplib.retry_yaml()}, name="canopy-wrong-ca", shutdown_timeout="1s")
            wrong.start(env.admin_port)
            env.loadgen(agents=1, batches=2, batch_size=10, depth=4, tasks=1)
            oaplib.wait_for("the handshake failure in canopy's log", lambda: "is not answering" in wrong.log(), 20)
            check(oap.stats()["snapshots_stored"] == before, "data arrived through an untrusted certificate")
            wrong.stop()
        finally:
            env.close()
            oap.stop()


if __name__ == "__main__":
    oaplib.run_test(main)
