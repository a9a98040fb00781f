"""Chaos: a hostile agent against a collector with a memory limit
(tests/chaos/hostile_agent.py, label chaos, bounded < 90 s).

While well-behaved agents (canopy-loadgen, three rounds) send over the same
tcp:// listener, a hostile client, speaking the SP wire format by hand
(tests/tls/spwire.py), sends:
  1. garbage: raw junk without a handshake, SP frames of random bytes, the
     wrong SP protocol, well-formed requests that lie (bad indices, no
     identity, unknown version);
  2. oversized messages: just over max_message_size (TOO_LARGE replies),
     lengths of 64 MiB (nng closes), and slow senders that announce a big
     message and trickle it, holding their buffers;
  3. a flood from 50 connections: valid ~200 KiB batches as fast as replies
     come (pushing decoded batches to the memory limit), pipelined junk whose
     replies are never read, and connect/junk/close churn.
It checks that every loadgen round has acked == sent, that the jsonl files
hold every loadgen snapshot exactly once, and that the collector's peak RSS
(VmHWM) stays within the bound below. It prints the figures.

The bound. The memory limiter counts decoded batches (service.memory_limit);
everything else the receiver can hold is bounded by its own limits:
  decoded batches          memory_limit (+ one batch per context past it)
  requests being decoded   contexts x (message + arena of 4x message)
  nng receive buffers      connections x 2 x max_message_size (nng reads one
                           message per connection at a time, up to twice the
                           limit so that it can answer TOO_LARGE)
  baseline                 the process before any load (measured)
"""
import argparse
import json
import os
import random
import socket
import struct
import shutil
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tls"))
sys.path.insert(0, os.path.join(here, "..", "integration"))
from cnutil import Collector  # noqa: E402
import spwire  # noqa: E402
import tlsutil  # noqa: E402

MiB = 1 << 20
MAX_MESSAGE = 256 * 1024
MEMORY_LIMIT = 16 * MiB
CONTEXTS = 16
MAX_CONNECTIONS = 256

CONFIG = """
receivers:
  nng:
    listen: [tcp://127.0.0.1:%(port)d]
    max_message_size: %(max_message)d
    contexts: %(contexts)d
    max_connections: %(max_connections)d
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: @DIR@/out
    format: jsonl
service:
  memory_limit: %(memory_limit)d
  shutdown_timeout: 1m
  telemetry:
    http:
      listen: 127.0.0.1:%(admin)d
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [file]
"""


def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


class Monitor(threading.Thread):
    """Samples RSS and the decoded-batch bytes gauge while the test runs."""

    def __init__(self, pid, admin):
        super().__init__(daemon=True)
        self.pid, self.admin = pid, admin
        self.stop = threading.Event()
        self.max_batch_bytes = 0
        self.max_rss = 0
        self.max_connections = 0

    def run(self):
        while not self.stop.wait(0.25):
            try:
                self.max_rss = max(self.max_rss, status(self.pid)["VmRSS"])
                ms = tlsutil.metrics(self.admin)
                self.max_batch_bytes = max(self.max_batch_bytes, tlsutil.metric(ms, "canopy_batch_bytes"))
                self.max_connections = max(self.max_connections, tlsutil.metric(ms, "canopy_receiver_connections"))
            except (OSError, KeyError):
                pass


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n


def quiet(fn):
    """Hostile work expects to be cut off; any socket error just ends it."""
    def run(*a):
        try:
            fn(*a)
        except (OSError, ConnectionError, ValueError, IndexError, struct.error):
            pass
    return run


def run_loadgen(bin_dir, url, name, agents, batches, results):
    cmd = [os.path.join(bin_dir, "canopy-loadgen"), "--url", url, "--agents", str(agents), "--batches", str(batches),
           "--batch-size", "64", "--depth", "12", "--tasks", "2", "--quiet", "--timeout", "60",
           "--attempt-timeout", "2000", "--seed", str(len(results) + 1)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    res = {k: float(v) for k, v in (kv.split("=") for kv in last.split())} if last else {}
    res.update(rc=r.returncode, name=name, wall=time.time() - t0, stderr=r.stderr[-500:])
    results.append(res)


# ---- phase 1: garbage -----------------------------------------------------------

@quiet
def junk_no_handshake(url, rnd, counts):
    host, port = url[6:].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
    s.sendall(rnd.randbytes(rnd.randint(1, 4096)))
    counts.add("junk_no_handshake")
    time.sleep(0.2)
    s.close()


@quiet
def junk_frames(url, rnd, counts):
    c = spwire.SPClient(url, timeout=5)
    for _ in range(20):
        r = c.request(rnd.randbytes(rnd.randint(0, 2000)))
        counts.add("reply_" + r["reason"])
    c.close()


@quiet
def wrong_protocol(url, rnd, counts):
    host, port = url[6:].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
    s.sendall(b"\x00SP\x00" + struct.pack(">H", 0x20) + b"\x00\x00")  # PUB
    counts.add("wrong_protocol")
    try:
        s.recv(64)
    finally:
        s.close()


@quiet
def lies(url, rnd, counts):
    c = spwire.SPClient(url, timeout=5)
    bodies = [
        spwire.batch_request(0, ["t"], [spwire.snapshot(0, 7, 0, [99])], instance="liar"),      # indices
        spwire.f_varint(1, 2) + spwire.f_bytes(2, spwire.agent()),                             # version 2
        spwire.f_varint(1, 1) + spwire.f_bytes(3, b""),                                        # no identity
        spwire.batch_request(0, ["", "s"], [spwire.snapshot(0, 1, 0, [])], instance="liar"),   # empty task
        spwire.f_varint(1, 1) + spwire.f_bytes(2, spwire.agent()) + spwire.f_bytes(3, b"\xff" * 30),
    ]
    for body in bodies * 4:
        r = c.request(body)
        counts.add("reply_" + r["reason"])
    c.close()


# ---- phase 2: oversized -----------------------------------------------------------

@quiet
def just_over(url, rnd, counts):
    c = spwire.SPClient(url, timeout=10)
    body = spwire.simple_batch(1, instance="big-%d" % rnd.random()) + spwire.f_bytes(15, b"\0" * (MAX_MESSAGE + 4096))
    for _ in range(3):
        r = c.request(body)
        counts.add("reply_" + r["reason"])
    c.close()


@quiet
def huge_claim(url, rnd, counts):
    c = spwire.SPClient(url, timeout=5)
    c.send_raw(c.frame(b"\x80\x00\x00\x01", claimed_len=64 * MiB) + rnd.randbytes(100 * 1024))
    counts.add("huge_claim")
    c.recv_reply()  # nng closes the connection instead
    counts.add("huge_claim_answered")


def slow_sender(url, rnd, counts, stop):
    """Announces a message just under twice the limit, trickles it, never finishes."""
    try:
        c = spwire.SPClient(url, timeout=5)
        c.send_raw(c.frame(b"", claimed_len=2 * MAX_MESSAGE - 64) + b"\x80\x00\x00\x01")
        counts.add("slow_senders")
        sent = 0
        while not stop.is_set() and sent < 2 * MAX_MESSAGE - 8192:
            c.send_raw(b"\xab" * 8192)
            sent += 8192
            stop.wait(0.05)
        stop.wait()
        c.close()
    except (OSError, ConnectionError):
        counts.add("slow_sender_cut")


# ---- phase 3: flood ----------------------------------------------------------------

def flood_batches(url, idx, counts, stop):
    """Valid ~200 KiB batches from a hostile identity, as fast as replies come."""
    rnd = random.Random(idx)
    seq = 0
    while not stop.is_set():
        try:
            c = spwire.SPClient(url, timeout=10)
            while not stop.is_set():
                body = spwire.simple_batch(seq, n_snapshots=40, n_frames=40, frame_len=120,
                                           instance="flood-%d" % idx, session=1000 + idx)
                r = c.request(body)
                counts.add("flood_reply_" + r["reason"])
                if r["reason"] in ("ok", "duplicate"):
                    seq += 1
                elif r["reason"] == "overloaded":
                    stop.wait(0.02 + rnd.random() * 0.05)
        except (OSError, ConnectionError):
            counts.add("flood_reconnect")
            stop.wait(0.1)


def flood_unread(url, idx, counts, stop):
    """Pipelined junk whose replies are never read: replies pile up in the collector's send path."""
    rnd = random.Random(1000 + idx)
    while not stop.is_set():
        try:
            c = spwire.SPClient(url, timeout=2)
            payload = b"".join(c.frame(struct.pack(">I", 0x80000000 | i) + rnd.randbytes(64)) for i in range(200))
            while not stop.is_set():
                c.send_raw(payload)
                counts.add("unread_requests", 200)
        except (OSError, ConnectionError):
            counts.add("unread_cut")
            stop.wait(0.2)


def flood_churn(url, idx, counts, stop):
    rnd = random.Random(2000 + idx)
    host, port = url[6:].rsplit(":", 1)
    while not stop.is_set():
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.sendall(b"\x00SP\x00" + struct.pack(">H", spwire.PROTO_REQ) + b"\x00\x00" + rnd.randbytes(256))
            s.close()
            counts.add("churn")
        except OSError:
            stop.wait(0.05)


def pool(fns, n_threads):
    ts = [threading.Thread(target=f, daemon=True) for f in fns[:n_threads]]
    for t in ts:
        t.start()
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    t_start = time.time()
    port, admin = tlsutil.free_port(), tlsutil.free_port()
    d = tempfile.mkdtemp(prefix="canopy-hostile-")
    url = "tcp://127.0.0.1:%d" % port
    cfg = CONFIG % dict(port=port, admin=admin, max_message=MAX_MESSAGE, contexts=CONTEXTS,
                        max_connections=MAX_CONNECTIONS, memory_limit=MEMORY_LIMIT)
    col = Collector(args.bin, cfg, workdir=d).start()
    pid = col.proc.pid
    time.sleep(0.3)
    baseline = status(pid)["VmRSS"]
    mon = Monitor(pid, "127.0.0.1:%d" % admin)
    mon.start()
    counts = Counts()
    results = []
    rnd = random.Random(7)
    stop = threading.Event()
    try:
        # Phase 1: garbage, with loadgen round 1 alongside.
        lg = threading.Thread(target=run_loadgen, args=(args.bin, url, "garbage", 4, 60, results))
        lg.start()
        ts = []
        for i in range(30):
            ts.append(threading.Thread(target=junk_no_handshake, args=(url, random.Random(i), counts)))
            ts.append(threading.Thread(target=junk_frames, args=(url, random.Random(100 + i), counts)))
        for i in range(10):
            ts.append(threading.Thread(target=wrong_protocol, args=(url, rnd, counts)))
            ts.append(threading.Thread(target=lies, args=(url, rnd, counts)))
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        lg.join(90)
        t1 = time.time()

        # Phase 2: oversized; the slow senders stay until the end.
        lg = threading.Thread(target=run_loadgen, args=(args.bin, url, "oversized", 4, 60, results))
        lg.start()
        slow = [threading.Thread(target=slow_sender, args=(url, rnd, counts, stop), daemon=True) for _ in range(20)]
        for t in slow:
            t.start()
        ts = [threading.Thread(target=just_over, args=(url, random.Random(i), counts)) for i in range(20)]
        ts += [threading.Thread(target=huge_claim, args=(url, random.Random(i), counts)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        lg.join(90)
        t2 = time.time()

        # Phase 3: flood from 50 connections for ~15 s, loadgen round 3 inside it.
        flood = [threading.Thread(target=flood_batches, args=(url, i, counts, stop), daemon=True) for i in range(25)]
        flood += [threading.Thread(target=flood_unread, args=(url, i, counts, stop), daemon=True) for i in range(15)]
        flood += [threading.Thread(target=flood_churn, args=(url, i, counts, stop), daemon=True) for i in range(10)]
        for t in flood:
            t.start()
        time.sleep(3)  # let the flood build up first
        lg = threading.Thread(target=run_loadgen, args=(args.bin, url, "flood", 6, 80, results))
        lg.start()
        lg.join(90)
        time.sleep(max(0, 15 - (time.time() - t2)))
        stop.set()
        for t in flood + slow:
            t.join(5)
        t3 = time.time()
        time.sleep(1.2)  # merge flush (200 ms) and one more copy of the transport error counters
        ms = tlsutil.metrics("127.0.0.1:%d" % admin)
        hwm = status(pid)["VmHWM"]
        lost, dup, expected, sent_total, seen, hostile_lines = audit(d, results)
    finally:
        stop.set()
        mon.stop.set()
        t_stop = time.time()
        try:
            rc = col.stop(timeout=20)
        except RuntimeError:
            rc = None  # did not stop: killed (see KNOWN below)
        stop_secs = time.time() - t_stop
    log = col.read_log()
    wedged = "nng did not close the socket" in log
    print_figures(results, counts, ms, baseline, hwm, mon, lost, dup, expected, sent_total, seen, hostile_lines,
                  t_start, t1, t2, t3)
    if rc is None or wedged:
        # nng 1.5.2 (Debian 12) wedges its pipe reaper when a peer closes while
        # replies to it are being sent (see hostile_nng_wedge.py); the receiver
        # then gives up on nng_close after 3 s, and the admin server's stop hangs.
        print("KNOWN: shutdown %s after %.1fs: nng 1.5.2 reaper wedge (receiver close abandoned: %s); "
              "see docs/security.md" % ("hung, killed" if rc is None else "finished", stop_secs, wedged))
    else:
        assert rc == 0, "canopy exited with %s:\n%s" % (rc, log[-3000:])
        print("shutdown: clean in %.1fs" % stop_secs)
    for bad in ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert bad not in log, log[log.index(bad) - 200:][:6000]
    for r in results:
        assert r["rc"] == 0 and r.get("acked") == r.get("sent") and r.get("sent", 0) > 0, r
    assert lost == 0 and dup == 0, (lost, dup)
    bound = memory_bound(baseline, mon)
    with open(os.path.join(args.bin, "canopy"), "rb") as f:
        asan = b"__asan_init" in f.read()
    if asan:
        # Shadow memory and the free quarantine (256 MiB by default) are ASan's, not canopy's.
        print("ASan build: peak RSS %.1f MiB not held to the bound" % (hwm / MiB))
    else:
        assert hwm <= bound, "peak RSS %d > bound %d" % (hwm, bound)
    assert mon.max_batch_bytes <= MEMORY_LIMIT + CONTEXTS * 4 * MAX_MESSAGE, mon.max_batch_bytes
    refused = reasons(ms, "canopy_receiver_refused_total", "reason")
    assert refused.get("malformed", 0) > 0 and refused.get("too_large", 0) > 0, refused
    assert time.time() - t_start < 90, "took %.1fs" % (time.time() - t_start)
    shutil.rmtree(d, ignore_errors=True)  # kept, with canopy.log, only when an assertion failed
    print("passed")


def memory_bound(baseline, mon):
    contexts_bytes = CONTEXTS * 5 * MAX_MESSAGE
    conn_bytes = max(mon.max_connections, 1) * 2 * MAX_MESSAGE
    return baseline + MEMORY_LIMIT + contexts_bytes + conn_bytes + 16 * MiB  # + allocator/thread slack


def reasons(ms, name, label):
    out = {}
    for k, v in ms.items():
        if k.startswith(name + "{") and v:
            out[k.split(label + '="')[1].split('"')[0]] = int(v)
    return out


def audit(d, results):
    """Every loadgen snapshot exactly once in the jsonl files (the hostile ones are counted apart)."""
    expected, sent_total = 0, 0
    for r in results:
        sent_total += r.get("sent", 0)
        expected += r.get("sent", 0) * 64
    seen, dup = set(), 0
    out = os.path.join(d, "out")
    hostile_lines = 0
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            for line in f:
                rec = json.loads(line)
                if not rec["serviceInstance"].startswith("loadgen-"):
                    hostile_lines += 1
                    continue
                key = (rec["serviceInstance"], rec["taskId"], rec["traceSegmentId"], rec["sequence"])
                if key in seen:
                    dup += 1
                seen.add(key)
    lost = expected - len(seen)
    return lost, dup, expected, sent_total, seen, hostile_lines


def print_figures(results, counts, ms, baseline, hwm, mon, lost, dup, expected, sent_total, seen, hostile_lines,
                  t_start, t1, t2, t3):
    for r in results:
        print("loadgen %-9s rc=%d sent=%d acked=%d snapshots=%d seconds=%.1f (wall %.1f)"
              % (r["name"], r["rc"], r.get("sent", -1), r.get("acked", -1), r.get("snapshots", -1),
                 r.get("seconds", -1), r["wall"]))
    bound = memory_bound(baseline, mon)
    refused = reasons(ms, "canopy_receiver_refused_total", "reason")
    terr = reasons(ms, "canopy_receiver_transport_errors_total", "error")
    print("limits met: %s" % reasons(ms, "canopy_receiver_limit_exceeded_total", "limit"))
    print("phases: garbage %.1fs, oversized %.1fs, flood %.1fs; total %.1fs"
          % (t1 - t_start, t2 - t1, t3 - t2, time.time() - t_start))
    print("hostile: %s" % " ".join("%s=%d" % kv for kv in sorted(counts.c.items())))
    print("collector refused: %s; transport errors: %s; connections refused=%d accepted=%d; "
          "memory limit refusals=%d; hostile snapshots written=%d"
          % (refused, terr, tlsutil.metric(ms, "canopy_receiver_connections_refused_total"),
             tlsutil.metric(ms, "canopy_receiver_connections_accepted_total"),
             tlsutil.metric(ms, "canopy_memory_limit_refused_batches_total"), hostile_lines))
    print("memory: baseline RSS %.1f MiB, peak RSS %.1f MiB, bound %.1f MiB = baseline + memory_limit %d MiB + "
          "contexts %d x 5 x %d KiB + peak connections %d x 2 x %d KiB + 16 MiB slack; "
          "decoded batches peaked at %.1f MiB (memory_limit %d MiB)"
          % (baseline / MiB, hwm / MiB, bound / MiB, MEMORY_LIMIT // MiB, CONTEXTS, MAX_MESSAGE // 1024,
             mon.max_connections, MAX_MESSAGE // 1024, mon.max_batch_bytes / MiB, MEMORY_LIMIT // MiB))
    print("good agents: sent=%d batches, snapshots expected=%d written=%d lost=%d dup=%d"
          % (sent_total, expected, len(seen), lost, dup))


if __name__ == "__main__":
    main()
