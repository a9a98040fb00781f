"""Listener security, end to end (tests/tls):

- `canopy validate` and `canopy run` refuse a plain tcp:// listener on a
  non-loopback address unless allow_insecure, and say why (FILE:LINE:COL);
  tls+tcp:// on any address is fine; TLS settings that cannot work are errors;
- ipc sockets get mode 0660 by default, and ipc_permissions/ipc_group when set;
- with client_auth: required, canopy-loadgen over tls+tcp:// with a client
  certificate gets every batch through, exactly once in the jsonl files;
  a client without a certificate, one trusting another CA, one with a
  certificate from another CA, and a plain tcp:// client are all refused,
  and the collector keeps serving the good ones.
Certificates are made at test time with openssl (tlsutil.make_pki).
"""
import argparse
import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "integration"))
from cnutil import Collector  # noqa: E402
import tlsutil  # noqa: E402

PIPELINE = """
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: @DIR@/out
    format: jsonl
service:
  shutdown_timeout: 1m
  telemetry:
    http:
      listen: 127.0.0.1:%(admin)d
  pipelines:
    profiles:
      receivers: %(receivers)s
      processors: [merge_by_task]
      exporters: [file]
"""


def validate(bin_dir, d, name, text):
    path = os.path.join(d, name + ".yaml")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([os.path.join(bin_dir, "canopy"), "validate", "-c", path], capture_output=True, text=True)
    return path, r


def check_validate(bin_dir, d, pki):
    """Configs that must be refused (with the reason at the right line) or accepted."""
    port = tlsutil.free_port()
    base = PIPELINE % {"admin": tlsutil.free_port(), "receivers": "[nng]"}
    tls = ("    tls:\n      cert_file: %s\n      key_file: %s\n      ca_file: %s\n      client_auth: required\n"
           % (pki["server"], pki["server.key"], pki["ca"]))
    bad = [
        ("plain-tcp-any", "receivers:\n  nng:\n    listen: [tcp://0.0.0.0:%d]\n" % port,
         ":3:13: listen: refusing plain tcp://0.0.0.0:%d on a non-loopback address" % port),
        ("plain-tcp-lan", "receivers:\n  nng:\n    listen: [tcp://10.1.2.3:%d]\n" % port,
         "refusing plain tcp://10.1.2.3:%d" % port),
        ("tls-no-cert", "receivers:\n  nng:\n    listen: [tls+tcp://0.0.0.0:%d]\n" % port,
         "needs tls.cert_file and tls.key_file"),
        ("tls-without-tls-url", "receivers:\n  nng:\n    listen: [ipc://@DIR@/x.sock]\n" + tls,
         "tls is set but no listen URL is tls+tcp://"),
        ("client-auth-without-ca",
         "receivers:\n  nng:\n    listen: [tls+tcp://127.0.0.1:%d]\n    tls:\n      cert_file: %s\n"
         "      key_file: %s\n      client_auth: required\n" % (port, pki["server"], pki["server.key"]),
         ":7:20: tls.client_auth: required needs tls.ca_file"),
        ("missing-key",
         "receivers:\n  nng:\n    listen: [tls+tcp://127.0.0.1:%d]\n    tls:\n      cert_file: %s\n"
         "      key_file: %s/nope.key\n" % (port, pki["server"], d),
         ":6:17: tls.key_file: cannot read %s/nope.key" % d),
        ("cert-is-a-device",
         "receivers:\n  nng:\n    listen: [tls+tcp://127.0.0.1:%d]\n    tls:\n      cert_file: /dev/zero\n"
         "      key_file: %s\n" % (port, pki["server.key"]),
         ":5:18: tls.cert_file: cannot read /dev/zero: not a regular file"),
        ("key-is-a-cert",
         "receivers:\n  nng:\n    listen: [tls+tcp://127.0.0.1:%d]\n    tls:\n      cert_file: %s\n"
         "      key_file: %s\n" % (port, pki["server"], pki["server"]),
         "holds no PEM \"PRIVATE KEY\" block"),
    ]
    for name, text, expect in bad:
        path, r = validate(bin_dir, d, name, text.replace("@DIR@", d) + base.replace("@DIR@", d))
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert path + (expect if expect.startswith(":") else "") in r.stderr or \
            (not expect.startswith(":") and expect in r.stderr), (name, expect, r.stderr)
        print("ok: validate refuses %s: %s" % (name, r.stderr.strip().splitlines()[0]))
    good = [
        ("plain-tcp-loopback", "receivers:\n  nng:\n    listen: [tcp://127.0.0.1:%d, 'tcp://[::1]:%d']\n"
         % (port, port)),
        ("plain-tcp-allow-insecure", "receivers:\n  nng:\n    listen: [tcp://0.0.0.0:%d]\n    allow_insecure: true\n"
         % port),
        ("tls-any-address", "receivers:\n  nng:\n    listen: [tls+tcp://0.0.0.0:%d]\n" % port + tls),
    ]
    for name, text in good:
        path, r = validate(bin_dir, d, name, text + base.replace("@DIR@", d))
        assert r.returncode == 0, (name, r.stderr)
        print("ok: validate accepts %s" % name)
    # `canopy run` builds the same graph: it refuses to start, with the same reason.
    path = os.path.join(d, "plain-tcp-any.yaml")
    t0 = time.time()
    r = subprocess.run([os.path.join(bin_dir, "canopy"), "run", "-c", path], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0, r
    assert path + ":3:13: listen: refusing plain tcp://0.0.0.0:%d" % port in r.stderr, r.stderr
    assert "allow_insecure: true" in r.stderr, r.stderr
    print("ok: canopy run refuses to start (exit %d in %.1fs): %s" % (r.returncode, time.time() - t0,
                                                                      r.stderr.strip().splitlines()[0]))


def loadgen(bin_dir, url, agents, batches, size, extra=(), timeout_s=60):
    cmd = [os.path.join(bin_dir, "canopy-loadgen"), "--url", url, "--agents", str(agents), "--batches",
           str(batches), "--batch-size", str(size), "--depth", "8", "--tasks", "2", "--quiet",
           "--timeout", str(timeout_s), "--attempt-timeout", "1000", *extra]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    res = dict(kv.split("=") for kv in last.split()) if last else {}
    return r.returncode, {k: float(v) for k, v in res.items()}, r.stderr, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="canopy-tls-")
    pki = tlsutil.make_pki(os.path.join(d, "pki"))
    check_validate(args.bin, d, pki)

    port, admin = tlsutil.free_port(), tlsutil.free_port()
    group = grp.getgrgid(os.getgid()).gr_name
    config = ("receivers:\n"
              "  nng:\n    listen: [ipc://@DIR@/canopy.sock, tls+tcp://127.0.0.1:%d]\n"
              "    tls:\n      cert_file: %s\n      key_file: %s\n      ca_file: %s\n      client_auth: required\n"
              "  nng/group:\n    listen: [ipc://@DIR@/group.sock]\n    ipc_permissions: \"0640\"\n"
              "    ipc_group: %s\n"
              % (port, pki["server"], pki["server.key"], pki["ca"], group))
    config += PIPELINE % {"admin": admin, "receivers": "[nng, nng/group]"}
    col = Collector(args.bin, config, workdir=d).start()
    url = "tls+tcp://127.0.0.1:%d" % port
    good = ["--tls-ca", pki["ca"], "--tls-cert", pki["client"], "--tls-key", pki["client.key"]]
    sent_ok = 0
    try:
        # ipc socket modes and group
        st = os.stat(os.path.join(d, "canopy.sock"))
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        st2 = os.stat(os.path.join(d, "group.sock"))
        assert stat.S_IMODE(st2.st_mode) == 0o640 and st2.st_gid == os.getgid(), (oct(st2.st_mode), st2.st_gid)
        print("ok: canopy.sock mode %o (default); group.sock mode %o group %s" %
              (stat.S_IMODE(st.st_mode), stat.S_IMODE(st2.st_mode), group))

        rc, res, err, secs = loadgen(args.bin, url, 2, 20, 64, good)
        assert rc == 0 and res["acked"] == res["sent"] == 40, (rc, res, err)
        sent_ok += 40 * 64
        print("ok: loadgen over %s with a client certificate: sent=%d acked=%d in %.1fs"
              % (url, res["sent"], res["acked"], secs))
        rc, res, err, secs = loadgen(args.bin, "ipc://%s/group.sock" % d, 1, 5, 64)
        assert rc == 0 and res["acked"] == 5, (rc, res, err)
        sent_ok += 5 * 64

        refused = [
            ("no client certificate", url, ["--tls-ca", pki["ca"]]),
            ("trusting another CA", url, ["--tls-ca", pki["rogue-ca"], "--tls-cert", pki["client"],
                                          "--tls-key", pki["client.key"]]),
            ("a certificate from another CA", url, ["--tls-ca", pki["ca"], "--tls-cert", pki["rogue-client"],
                                                    "--tls-key", pki["rogue-client.key"]]),
            ("plain tcp to the TLS port", "tcp://127.0.0.1:%d" % port, []),
        ]
        for what, u, extra in refused:
            rc, res, err, secs = loadgen(args.bin, u, 1, 2, 8, extra, timeout_s=3)
            assert rc != 0 and res.get("acked", 0) == 0, (what, rc, res, err)
            print("ok: refused, %s: exit %d, acked=%d in %.1fs" % (what, rc, res.get("acked", 0), secs))

        # The refused ones did no harm: a good agent still gets through.
        rc, res, err, secs = loadgen(args.bin, url, 1, 10, 64, good)
        assert rc == 0 and res["acked"] == 10, (rc, res, err)
        sent_ok += 10 * 64
        # The listener copies nng's per-listener error counters every second.
        time.sleep(1.5)
        ms = tlsutil.metrics("127.0.0.1:%d" % admin)
        errs = {e: tlsutil.metric(ms, "canopy_receiver_transport_errors_total", listener=url, error=e)
                for e in ["auth", "proto", "other", "oom", "reject", "timeout"]}
        print("ok: still serving; connections accepted=%d; transport errors on %s: %s"
              % (tlsutil.metric(ms, "canopy_receiver_connections_accepted_total"), url,
                 " ".join("%s=%d" % kv for kv in errs.items())))
        # Refused handshakes are counted, never silent.
        assert errs["auth"] >= 2, errs
        assert sum(errs.values()) >= 4, errs
    finally:
        rc = col.stop(timeout=120)
    assert rc == 0, "canopy exited with %s:\n%s" % (rc, col.read_log()[-3000:])
    log = col.read_log()
    assert "listening on tls+tcp://127.0.0.1:%d (TLS, client certificates required)" % port in log, log[-2000:]

    seen, total = set(), 0
    out = os.path.join(d, "out")
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            for line in f:
                rec = json.loads(line)
                key = (rec["serviceInstance"], rec["taskId"], rec["traceSegmentId"], rec["sequence"])
                assert key not in seen, key
                seen.add(key)
                total += 1
    assert total == sent_ok, (total, sent_ok)
    print("ok: %d snapshots in the jsonl files, each once" % total)
    print("passed")
    shutil.rmtree(d, ignore_errors=True)  # kept when the test fails, to look at


if __name__ == "__main__":
    main()
