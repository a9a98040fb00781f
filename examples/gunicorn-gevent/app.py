"""A small shop backend: the WSGI app of the gunicorn + gevent example.

Each endpoint mixes the two things a profile should tell apart: waiting on
I/O (sockets and sleeps, which gevent turns into greenlet switches, during
which other requests run) and CPU work (JSON, hashing, sorting). Handler names are the names you should find
in the profiles: checkout, reserve_inventory, charge_payment, ...

    gunicorn -k gevent -w 4 -c python:canopy_agent.gunicorn_conf app:app
"""

import hashlib
import json
import random
import socket
import time

import threading

# Under gunicorn's gevent worker the standard library is monkey-patched
# before this module is imported: time.sleep and sockets then wait
# cooperatively (other requests run meanwhile) and threads are greenlets.
# Written against the standard library, the app also runs on a threaded
# worker (gunicorn -k gthread), where canopy uses thread mode.

PRODUCTS = [{"sku": "sku-%04d" % i, "name": "product %d" % i, "price_cents": 199 + 37 * i} for i in range(200)]


# ---- simulated downstream services --------------------------------------------

def _remote_call(payload, latency_s):
    """A request/response over a real (gevent) socket to a peer that answers
    after latency_s, like a call to another service."""
    ours, theirs = socket.socketpair()

    def peer():
        try:
            data = theirs.recv(65536)
            time.sleep(latency_s)
            theirs.sendall(b"ok:" + hashlib.md5(data).hexdigest().encode())
        finally:
            theirs.close()

    responder = threading.Thread(target=peer, daemon=True)
    responder.start()
    try:
        ours.sendall(payload)
        return ours.recv(65536)
    finally:
        ours.close()
        responder.join()


def reserve_inventory(items):
    """Waits on the inventory service (I/O)."""
    return _remote_call(json.dumps(items).encode(), latency_s=0.005 + random.random() * 0.01)


def compute_totals(items):
    """CPU: price lookups and JSON round-trips, like serialising an order."""
    by_sku = {p["sku"]: p for p in PRODUCTS}
    order = {"lines": [], "total_cents": 0}
    for _ in range(20):
        order = {"lines": [], "total_cents": 0}
        for item in items:
            product = by_sku[item["sku"]]
            line = {"sku": item["sku"], "qty": item["qty"], "cents": product["price_cents"] * item["qty"]}
            order["lines"].append(line)
            order["total_cents"] += line["cents"]
        order = json.loads(json.dumps(order))
    return order


def sign_payment(order):
    """CPU: a hashing loop, like signing a payment request."""
    digest = json.dumps(order, sort_keys=True).encode()
    for _ in range(2000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def charge_payment(order):
    """CPU (signing), then a wait on the payment gateway (I/O)."""
    signature = sign_payment(order)
    time.sleep(0.005 + random.random() * 0.01)
    return {"status": "charged", "signature": signature[:16]}


# ---- handlers ----------------------------------------------------------------

def checkout(environ):
    items = [{"sku": PRODUCTS[random.randrange(len(PRODUCTS))]["sku"], "qty": 1 + random.randrange(3)}
             for _ in range(5)]
    reserve_inventory(items)
    order = compute_totals(items)
    payment = charge_payment(order)
    return {"order": order["total_cents"], "payment": payment["status"]}


def list_products(environ):
    time.sleep(0.002)  # the catalog database
    return {"products": PRODUCTS[:50]}


def search(environ):
    query = environ.get("QUERY_STRING", "") or "product 1"
    hits = sorted((p for p in PRODUCTS if query.split("=")[-1] in p["name"]), key=lambda p: p["price_cents"])
    return {"hits": len(hits)}


# ---- fan-out: work a request spawns (needs gevent) ---------------------------
#
# canopy profiles the greenlets a request spawns under the request, rooted at
# the spawn site: the flame graph of /fanout shows
# app -> fan_out -> <greenlet spawn> -> quote_prices / quote_taxes.

def _burn(seconds):
    """CPU for `seconds` with no switch inside, like checksumming a payload."""
    end = time.perf_counter() + seconds
    digest = b"canopy"
    while time.perf_counter() < end:
        for _ in range(50):
            digest = hashlib.sha256(digest).digest()
    return digest.hex()[:8]


def quote_prices():
    """The price service's computation: 70% of /fanout's CPU."""
    return _burn(0.035)


def quote_taxes():
    """The tax computation: 30% of /fanout's CPU."""
    return _burn(0.015)


def fan_out(environ):
    """Two computations in parallel greenlets, then the answer."""
    import gevent

    jobs = [gevent.spawn(quote_prices), gevent.spawn(quote_taxes)]
    gevent.joinall(jobs)
    return {"prices": jobs[0].value, "taxes": jobs[1].value}


def render_chart():
    return _burn(0.02)


def build_report():
    """A child that fans out itself: render_chart is the request's grandchild."""
    import gevent

    chart = gevent.spawn(render_chart)
    chart.join()
    return chart.value + _burn(0.005)


def fan_out_nested(environ):
    import gevent

    job = gevent.spawn(build_report)
    job.join()
    return {"report": job.value}


def make_thumbnail(i):
    return _burn(0.01)


def fan_out_pool(environ):
    """A gevent pool: map() runs in a helper greenlet that spawns the workers."""
    import gevent.pool

    return {"thumbnails": gevent.pool.Pool(3).map(make_thumbnail, range(3))}


def health(environ):
    return {"ok": True, "time": time.time()}


def canopy_stats(environ):
    """The agent's counters for this worker (drops, snapshots, batches)."""
    try:
        import canopy_agent
    except ImportError:
        return {"running": False}
    return canopy_agent.stats()


ROUTES = {
    "/checkout": checkout,
    "/products": list_products,
    "/search": search,
    "/fanout": fan_out,
    "/fanout/nested": fan_out_nested,
    "/fanout/pool": fan_out_pool,
    "/health": health,
    "/_canopy/stats": canopy_stats,
}


def app(environ, start_response):
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if handler is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(handler(environ)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
