"""Sends concurrent HTTP requests (gevent) and prints a summary line.

    /usr/bin/python3 load.py --url http://127.0.0.1:8000/checkout -n 200 -c 200

Last line: "requests=<n> ok=<n> failed=<n> seconds=<s> rate=<req/s>"; exit code 1 if any failed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

import gevent.pool  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", "--requests", type=int, default=200)
    ap.add_argument("-c", "--concurrency", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    u = urllib.parse.urlsplit(args.url)
    path = u.path + ("?" + u.query if u.query else "")
    failures = []

    def one(_):
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                failures.append("status %d" % resp.status)
        except Exception as e:
            failures.append(repr(e))

    t0 = time.time()
    gevent.pool.Pool(args.concurrency).map(one, range(args.requests))
    dt = time.time() - t0
    for f in failures[:5]:
        print("failure:", f, file=sys.stderr)
    ok = args.requests - len(failures)
    print("requests=%d ok=%d failed=%d seconds=%.3f rate=%.1f" % (args.requests, ok, len(failures), dt,
                                                                 args.requests / dt if dt else 0.0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
