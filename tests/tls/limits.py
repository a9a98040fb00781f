"""The nng receiver's limits, each over by one, against a real collector
(tests/tls/limits.py):

  max_frames, max_string_length, max_strings_per_batch, max_snapshots_per_batch:
      a LIMIT_EXCEEDED reply (not retryable), canopy_receiver_refused_total
      {reason="limit_exceeded"} and canopy_receiver_limit_exceeded_total{limit=...};
  max_message_size: a TOO_LARGE reply up to twice the limit; beyond that nng
      closes the connection, counted in canopy_receiver_transport_errors_total
      {error="other"};
  max_connections: connections past it are closed at once and counted;
  reply_timeout: a connection that sends requests but does not read the
      replies is closed, and the contexts go back to serving others.
Each also leaves a log line naming the peer, the limit and the detail, at most
once per 5 s per limit. Requests within the limits still get through.
"""
import argparse
import os
import shutil
import re
import socket
import struct
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "integration"))
from cnutil import Collector  # noqa: E402
import spwire  # noqa: E402
import tlsutil  # noqa: E402

CONFIG = """
receivers:
  nng:
    listen: [tcp://127.0.0.1:%(port)d]
    max_message_size: 64KiB
    max_frames: 8
    max_string_length: 64
    max_strings_per_batch: 16
    max_snapshots_per_batch: 4
    max_connections: 4
    reply_timeout: 500ms
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
tasks:
  static:
%(tasks)s
"""

# Static tasks for the hostile service, so a command query gets a reply of a few KiB.
TASKS = "".join("    - {id: task-%02d-%s, service: hostile, endpoint: /e%d, duration: 10m, "
                "min_duration_threshold: 0ms, dump_period: 10ms, max_sampling_count: 5}\n" % (i, "x" * 40, i)
                for i in range(24))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    port, admin = tlsutil.free_port(), tlsutil.free_port()
    d = tempfile.mkdtemp(prefix="canopy-limits-")
    col = Collector(args.bin, CONFIG % {"port": port, "admin": admin, "tasks": TASKS.rstrip()}, workdir=d).start()
    url = "tcp://127.0.0.1:%d" % port
    try:
        c = spwire.SPClient(url)
        ok = c.request(spwire.simple_batch(0, n_snapshots=4, n_frames=8, frame_len=64, extra_strings=6))
        assert ok["reason"] == "ok", ok
        print("ok: a batch exactly at every limit is accepted")
        cases = [
            ("max_frames", spwire.simple_batch(1, n_frames=9), "has 9 frames, limit is 8"),
            ("max_string_length", spwire.simple_batch(2, frame_len=65), "is 65 bytes long, limit is 64"),
            ("max_strings_per_batch", spwire.simple_batch(3, extra_strings=13), "17 strings, limit is 16"),
            ("max_snapshots_per_batch", spwire.simple_batch(4, n_snapshots=5), "5 snapshots, limit is 4"),
        ]
        for limit, body, detail in cases:
            r = c.request(body)
            assert r["reason"] == "limit_exceeded" and not r["retryable"] and detail in r["detail"], (limit, r)
            print("ok: %s: reply %s, %r" % (limit, r["reason"], r["detail"]))
        big = spwire.simple_batch(5, n_frames=2, frame_len=10) + spwire.f_bytes(15, b"\0" * (70 * 1024))
        r = c.request(big)
        assert r["reason"] == "too_large" and not r["retryable"], r
        print("ok: max_message_size: %d bytes: reply %s, %r" % (len(big), r["reason"], r["detail"]))
        # Past twice the limit nng does not read the message: it closes the connection.
        c.send_raw(c.frame(b"\x80\x00\x00\x09", claimed_len=200 * 1024) + b"\0" * 4096)
        try:
            c.recv_reply()
            raise AssertionError("a 200 KiB message was answered")
        except (ConnectionError, socket.timeout, OSError):
            pass
        c.close()
        print("ok: a 200 KiB message: connection closed by nng")

        # max_connections: 4. The fifth and sixth are closed at once.
        def open_connections():
            return tlsutil.metric(tlsutil.metrics("127.0.0.1:%d" % admin), "canopy_receiver_connections")

        held = [spwire.SPClient(url) for _ in range(4)]
        # nng admits a connection asynchronously after its handshake: wait until
        # the collector counts all four, or a fifth could still get in.
        deadline = time.time() + 5
        while open_connections() < 4:
            assert time.time() < deadline, "the collector counts %d of 4 connections" % open_connections()
            time.sleep(0.05)
        refused = 0
        for _ in range(2):
            try:
                x = spwire.SPClient(url, timeout=2)
                x.request(spwire.simple_batch(9))
                x.close()
            except (ConnectionError, socket.timeout, OSError):
                refused += 1
        assert refused == 2, refused
        r = held[0].request(spwire.simple_batch(6))
        assert r["reason"] == "ok", r
        for h in held:
            h.close()
        # nng sees the closes asynchronously: wait until the collector counts no
        # connection, or the next one could still be refused as a fifth.
        deadline = time.time() + 5
        while open_connections() > 0:
            assert time.time() < deadline, "the closed connections are still counted as open"
            time.sleep(0.05)
        print("ok: max_connections 4: 2 more connections refused; the 4 held ones still served")

        # reply_timeout: pipelined command queries (each answered with the 24
        # tasks, a few KiB) whose replies are never read, a tiny receive window;
        # the connection stays open so only the collector can end it.
        slow = spwire.SPClient(url, timeout=10, rcvbuf=4096)
        slow.sock.setblocking(False)
        query = spwire.f_varint(1, 1) + spwire.f_bytes(2, spwire.agent()) + spwire.f_bytes(4, spwire.f_varint(1, 0))
        junk = b"".join(slow.frame(struct.pack(">I", 0x80000000 | i) + query) for i in range(1, 5001))
        sent, t0 = 0, time.time()
        while sent < len(junk) and time.time() - t0 < 5:
            try:
                sent += slow.sock.send(junk[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break  # the collector already closed it: what is tested below
        # Meanwhile a well-behaved client is served: the stuck replies hold
        # contexts only until reply_timeout closes their connection.
        t1 = time.time()
        good = spwire.SPClient(url, timeout=10)
        r = good.request(spwire.simple_batch(7))
        assert r["reason"] == "ok", r
        good.close()
        good_secs = time.time() - t1
        # Not reading the slow socket (that would take the replies): the collector's
        # counters say when it closed the connection; then the socket must be dead.
        deadline = time.time() + 5
        while time.time() < deadline:
            ms = tlsutil.metrics("127.0.0.1:%d" % admin)
            if tlsutil.metric(ms, "canopy_receiver_reply_timeouts_total") >= 1:
                break
            time.sleep(0.2)
        closed = False
        slow.sock.setblocking(True)
        slow.sock.settimeout(2)
        try:
            while slow.sock.recv(65536):
                pass
            closed = True  # EOF
        except socket.timeout:
            pass
        except OSError:  # reset: closed with our requests unread
            closed = True
        assert closed, "a connection that does not read its replies was not closed"
        print("ok: reply_timeout: %d bytes of pipelined queries, replies never read; connection closed by the collector "
              "%.1fs after; a good client was served in %.2fs meanwhile" % (sent, time.time() - t0, good_secs))

        time.sleep(1.5)  # transport error counters are copied every second
        ms = tlsutil.metrics("127.0.0.1:%d" % admin)
        for limit, _, _ in cases + [("max_message_size", None, None)]:
            v = tlsutil.metric(ms, "canopy_receiver_limit_exceeded_total", limit=limit)
            assert v == 1, (limit, v)
        assert tlsutil.metric(ms, "canopy_receiver_refused_total", reason="limit_exceeded") == 4
        assert tlsutil.metric(ms, "canopy_receiver_refused_total", reason="too_large") == 1
        assert tlsutil.metric(ms, "canopy_receiver_connections_refused_total") == 2
        assert tlsutil.metric(ms, "canopy_receiver_reply_timeouts_total") >= 1
        # nng closes a connection that announces a message over twice the limit;
        # it counts it with every other close ("other"): at least that one.
        other = tlsutil.metric(ms, "canopy_receiver_transport_errors_total", error="other")
        assert other >= 1, other
        print("ok: metrics: limit_exceeded_total 1 per limit, refused_total{limit_exceeded}=4 {too_large}=1, "
              "connections_refused_total=2, transport_errors_total{other}=%d" % other)
    finally:
        rc = col.stop(timeout=60)
    assert rc == 0, rc
    log = col.read_log()
    for limit, _, detail in cases:
        # Refused before its identity is trusted: the peer address names the sender.
        assert re.search(r"refused a request from 127\.0\.0\.1:\d+: %s: .*%s"
                         % (limit, re.escape(detail)), log), (limit, log[-3000:])
    assert re.search(r"refused a request from 127\.0\.0\.1:\d+: max_message_size: message of \d+ bytes exceeds", log)
    assert re.search(r"refused a connection from 127\.0\.0\.1:\d+: max_connections \(4\) reached", log)
    assert re.search(r"closed the connection from 127\.0\.0\.1:\d+: it did not take a reply within reply_timeout", log)
    print("ok: one log line per limit, naming the peer")
    print("passed")
    shutil.rmtree(d, ignore_errors=True)  # kept when the test fails, to look at


if __name__ == "__main__":
    main()
