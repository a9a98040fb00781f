"""Reproduction (disabled in ctest until nng is upgraded): nng 1.5.2 (Debian 12)
wedges its pipe reaper when a peer closes its connection while the collector
is sending replies to it, e.g. an agent killed (kill -9, a gunicorn worker
timeout) with requests in flight, or a client that pipelines requests and
hangs up. From then on no closed connection of the process is ever reaped:
canopy_receiver_connections only grows, file descriptors leak until
max_connections (or the fd limit) refuses every agent, and nng_close never
returns, so shutdown hangs (the receiver gives up after 3 s; the admin HTTP
server's stop, in core/admin.c, then hangs for good).

Steps: a raw SP client sends 20 pipelined requests and closes at once, five
times; a well-behaved loadgen then connects and disconnects; every connection
must be reaped (gauge back to 0) and SIGTERM must stop the collector cleanly.
Passes with a fixed nng (the fix is in nng's releases after 1.5.2; see nng
issues #1543 and #1813); fails today.
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tls"))
sys.path.insert(0, os.path.join(here, "..", "integration"))
from cnutil import Collector  # noqa: E402
import spwire  # noqa: E402
import tlsutil  # noqa: E402

CONFIG = """
receivers:
  nng:
    listen: [tcp://127.0.0.1:%(port)d]
exporters:
  discard:
service:
  telemetry:
    http:
      listen: 127.0.0.1:%(admin)d
  pipelines:
    p:
      receivers: [nng]
      exporters: [discard]
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    port, admin = tlsutil.free_port(), tlsutil.free_port()
    col = Collector(args.bin, CONFIG % {"port": port, "admin": admin},
                    workdir=tempfile.mkdtemp(prefix="canopy-wedge-")).start()
    url = "tcp://127.0.0.1:%d" % port
    try:
        query = spwire.f_varint(1, 1) + spwire.f_bytes(2, spwire.agent()) + spwire.f_bytes(4, spwire.f_varint(1, 0))
        for _ in range(5):
            c = spwire.SPClient(url)
            c.send_raw(b"".join(c.frame(struct.pack(">I", 0x80000000 | i) + query) for i in range(1, 21)))
            c.close()  # hang up while the replies are on their way
        r = subprocess.run([os.path.join(args.bin, "canopy-loadgen"), "--url", url, "--batches", "2", "--quiet"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(2)
        open_conns = tlsutil.metric(tlsutil.metrics("127.0.0.1:%d" % admin), "canopy_receiver_connections")
        print("connections still open after every peer left: %d" % open_conns)
    finally:
        t0 = time.time()
        try:
            rc = col.stop(timeout=15)
        except RuntimeError:
            rc = None
    wedged = "nng did not close the socket" in col.read_log()
    print("shutdown: %s in %.1fs; receiver close abandoned: %s"
          % ("hung, killed" if rc is None else "exit %d" % rc, time.time() - t0, wedged))
    assert open_conns == 0 and rc == 0 and not wedged, "nng 1.5.2 reaper wedge reproduced"
    print("passed")


if __name__ == "__main__":
    main()
