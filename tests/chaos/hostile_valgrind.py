"""The collector under valgrind on an integration run (label valgrind):
canopy-loadgen -> canopy (nng over ipc, tcp and tls+tcp with client
certificates, merge_by_task, jsonl files)
-> SIGTERM, with a few hostile requests on the way (garbage, a lie, an
oversized message, a limit over by one, a connection refused by
max_connections), so the refusal paths are checked for leaks and invalid
accesses too. Exits 77 (skipped) without valgrind.

  valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect
           --error-exitcode=1 canopy run -c ...

"Possibly lost" blocks are reported but not errors: nng's threads still own
memory when the process exits (nng has no global teardown in 1.5).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tls"))
import spwire  # noqa: E402
import tlsutil  # noqa: E402

CONFIG = """
receivers:
  nng:
    listen: [ipc://%(dir)s/canopy.sock, tcp://127.0.0.1:%(port)d, tls+tcp://127.0.0.1:%(tls_port)d]
    tls: {cert_file: %(cert)s, key_file: %(key)s, ca_file: %(ca)s, client_auth: required}
    max_message_size: 64KiB
    max_frames: 64
    max_connections: 8
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: %(dir)s/out
    format: jsonl
service:
  memory_limit: 16MiB
  shutdown_timeout: 1m
  telemetry:
    http:
      listen: 127.0.0.1:%(admin)d
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [file]
tasks:
  static:
    - {id: task-0, service: loadgen, endpoint: /e, duration: 10m, min_duration_threshold: 0ms,
       dump_period: 10ms, max_sampling_count: 5}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--valgrind", default="")
    args = ap.parse_args()
    args.valgrind = args.valgrind if args.valgrind and "NOTFOUND" not in args.valgrind else shutil.which("valgrind")
    if not args.valgrind:
        print("SKIPPED: valgrind is not installed (Debian: valgrind)")
        sys.exit(77)
    d = tempfile.mkdtemp(prefix="canopy-valgrind-")
    port, admin, tls_port = tlsutil.free_port(), tlsutil.free_port(), tlsutil.free_port()
    pki = tlsutil.make_pki(os.path.join(d, "pki"))
    with open(os.path.join(d, "canopy.yaml"), "w") as f:
        f.write(CONFIG % {"dir": d, "port": port, "admin": admin, "tls_port": tls_port, "cert": pki["server"],
                          "key": pki["server.key"], "ca": pki["ca"]})
    vlog = os.path.join(d, "valgrind.log")
    cmd = [args.valgrind, "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=1",
           "--num-callers=30", "--log-file=" + vlog, os.path.join(args.bin, "canopy"), "run", "-c",
           os.path.join(d, "canopy.yaml")]
    t0 = time.time()
    log = open(os.path.join(d, "canopy.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while b"] ready" not in open(os.path.join(d, "canopy.log"), "rb").read():
            assert proc.poll() is None and time.time() < deadline, open(os.path.join(d, "canopy.log")).read()
            time.sleep(0.2)
        print("canopy ready under valgrind in %.1fs" % (time.time() - t0))
        url = "tcp://127.0.0.1:%d" % port
        c = spwire.SPClient(url, timeout=30)
        replies = [c.request(b"\x08\x01garbage"),                                              # malformed
                   c.request(spwire.batch_request(0, ["t"], [spwire.snapshot(0, 5, 0, [])])),   # bad index
                   c.request(spwire.simple_batch(1, n_frames=65)),                              # max_frames
                   c.request(spwire.simple_batch(2) + spwire.f_bytes(15, b"\0" * 70000)),       # too large
                   c.request(spwire.f_varint(1, 1) + spwire.f_bytes(2, spwire.agent())
                             + spwire.f_bytes(4, spwire.f_varint(1, 0)))]                       # command query
        print("hostile replies: %s" % [r["reason"] for r in replies])
        assert [r["reason"] for r in replies] == ["malformed", "index_out_of_range", "limit_exceeded",
                                                  "too_large", "ok"], replies
        held = [spwire.SPClient(url, timeout=30) for _ in range(8)]
        try:
            extra = spwire.SPClient(url, timeout=5)
            extra.request(spwire.simple_batch(3))
            refused = False
        except (ConnectionError, OSError):
            refused = True
        for h in held:
            h.close()
        c.close()
        print("ninth connection refused by max_connections: %s" % refused)
        time.sleep(1)  # the held connections are gone
        totals = []
        tls = ["--tls-ca", pki["ca"], "--tls-cert", pki["client"], "--tls-key", pki["client.key"]]
        for url2, agents, extra in [("ipc://%s/canopy.sock" % d, 2, []), (url, 2, []),
                                    ("tls+tcp://127.0.0.1:%d" % tls_port, 1, tls)]:
            r = subprocess.run([os.path.join(args.bin, "canopy-loadgen"), "--url", url2, "--agents", str(agents),
                                "--batches", "10", "--batch-size", "64", "--depth", "12", "--tasks", "2",
                                "--quiet", "--timeout", "120", "--attempt-timeout", "10000", *extra],
                               capture_output=True, text=True, timeout=180)
            last = r.stdout.strip().splitlines()[-1]
            print("loadgen %s: %s" % (url2, last))
            res = dict(kv.split("=") for kv in last.split())
            assert r.returncode == 0 and res["acked"] == res["sent"], (r.returncode, last, r.stderr[-500:])
            totals.append(int(res["sent"]) * 64)
        time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            print("canopy did not stop within 120 s under valgrind")
        log.close()
    report = open(vlog).read()
    summary = re.findall(r"(?:ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable):.*", report)
    print("valgrind exit %d after %.1fs:\n  %s" % (rc, time.time() - t0, "\n  ".join(summary)))
    seen, total = set(), 0
    for name in os.listdir(os.path.join(d, "out")):
        for line in open(os.path.join(d, "out", name)):
            rec = json.loads(line)
            if rec["serviceInstance"].startswith("loadgen-"):
                seen.add((rec["serviceInstance"], rec["taskId"], rec["traceSegmentId"], rec["sequence"]))
                total += 1
    print("snapshots written %d (distinct %d), expected %d" % (total, len(seen), sum(totals)))
    if rc != 0:
        # The first error reports with their stacks.
        blocks = re.split(r"\n==\d+== \n", report)
        print("\n".join(b for b in blocks if "at 0x" in b and ("Invalid" in b or "lost" in b or "uninit" in b))[:12000])
    assert rc == 0, "valgrind found errors (log: %s)" % vlog
    assert total == len(seen) == sum(totals), (total, len(seen), sum(totals))
    shutil.rmtree(d, ignore_errors=True)  # kept, with the valgrind log, only when an assertion failed
    print("passed")


if __name__ == "__main__":
    main()
