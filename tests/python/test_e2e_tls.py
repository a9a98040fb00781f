"""The agent over TLS, end to end: a collector listening on
tls+tcp://127.0.0.1:<port> with client_auth: required, and real
gunicorn -k gevent -w 2 fleets of the example app configured through the
CANOPY_TLS_* variables. Certificates are made at test time with openssl
(tests/tls/tlsutil.make_pki).

- Right CA and a client certificate from it: the workers fetch the task and
  their profiled snapshots arrive in the task's jsonl, from both workers,
  every segment dense from 0, every batch acked.
- A fleet trusting another CA (with a client certificate from that CA) gets
  nothing through: no batch acked, no row written, yet the app serves every
  request; the collector counts the refused handshakes
  (canopy_receiver_transport_errors_total{error="auth"}) and logs them, and
  still serves the good fleet afterwards.
- TLS settings that cannot work (a certificate without its key, a missing CA
  file, TLS settings with a plain URL) stop the agent at start with the
  reason in gunicorn's log, and the app serves as it would without canopy.
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import fleet  # noqa: E402
import tlsutil  # noqa: E402

APP = os.path.join(fleet.EXAMPLE, "app.py")
TASK = "task-tls"


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class AgentTls(fleet.FleetTestCase):
    workdir_prefix = "canopy-py-tls-"

    def setUp(self):
        super().setUp()
        self.pki = tlsutil.make_pki(self.work.join("pki"))

    def auth_errors(self):
        ms = tlsutil.metrics(self.collector.admin)
        return tlsutil.metric(ms, "canopy_receiver_transport_errors_total", listener=self.collector.url,
                              error="auth")

    def test_mutual_tls_delivers_and_another_ca_gets_nothing(self):
        url = "tls+tcp://127.0.0.1:%d" % fleet.free_port()
        self.collector = fleet.Collector(self.work, [{"id": TASK, "endpoint": "/checkout",
                                                      "max_sampling_count": 100000}], url=url, tls={
            "cert_file": self.pki["server"], "key_file": self.pki["server.key"], "ca_file": self.pki["ca"],
            "client_auth": "required"}).start()

        # --- the right CA and a client certificate: everything gets through.
        good = self.fleet(workers=2, name="good", env={
            "CANOPY_COLLECTOR": url,
            "CANOPY_TLS_CA_FILE": self.pki["ca"],
            "CANOPY_TLS_CERT_FILE": self.pki["client"],
            "CANOPY_TLS_KEY_FILE": self.pki["client.key"],
            # The server certificate has DNS:localhost too; naming it checks
            # that the setting reaches the library (the URL's host differs).
            "CANOPY_TLS_SERVER_NAME": "localhost",
            "CANOPY_MAX_PARALLEL": "1000",
        })
        # The task comes from the collector: command queries work over TLS.
        # The workers are the ones this wait saw: a second worker_stats() may hear only one of them
        # (the kernel can hand every connection to the same worker), which once left a worker out.
        pids = set(fleet.wait_until(
            lambda: (lambda s: s if len(s) == 2 and all(v.get("tasks") for v in s.values()) else None)(
                good.worker_stats()), 15, interval=0.2, what="the task in both workers"))

        def from_both_workers():
            # Requests are spread by the kernel's accept; load until both workers profiled some.
            r = fleet.load(good.base + "/checkout", 40, 10)
            self.assertEqual(r["failed"], 0, r["stderr"])
            rows = self.collector.rows(TASK)
            return rows if {int(x["serviceInstance"].split("@")[0]) for x in rows} >= pids else None

        rows = fleet.wait_until(from_both_workers, 20, interval=0.3, what="snapshots from both workers")
        stats = fleet.wait_until(
            lambda: (lambda s: s if len(s) == 2 and all(v["requests_pending"] == 0 for v in s.values()) else None)(
                good.worker_stats()), 15, interval=0.2, what="every batch acked")
        rows = self.collector.rows(TASK)
        self.assertEqual({int(x["serviceInstance"].split("@")[0]) for x in rows}, pids)
        segments = fleet.check_segments(self, rows)
        handler = APP + ".checkout: "
        for r in rows:
            self.assertEqual((r["taskId"], r["service"]), (TASK, "shop"))
            self.assertTrue(any(s.startswith(handler) for s in r["stack"]["codeSignatures"]), r)
        for pid, st in stats.items():
            self.assertEqual(st["mode"], "greenlet")
            self.assertGreater(st["batches_acked"], 0, st)
            self.assertEqual(st["batches_dropped"] + st["snapshots_dropped"] + st["lib_snapshots_dropped"], 0, st)
        self.assertEqual(self.auth_errors(), 0, "the good fleet never fails a handshake")
        print("good fleet: %d snapshots in %d segments from workers %s" % (len(rows), len(segments), sorted(pids)),
              file=sys.stderr)

        # --- another CA (and a client certificate from it): nothing gets through.
        rogue = self.fleet(workers=2, name="rogue", env={
            "CANOPY_COLLECTOR": url,
            "CANOPY_SERVICE": "rogue",
            "CANOPY_TLS_CA_FILE": self.pki["rogue-ca"],
            "CANOPY_TLS_CERT_FILE": self.pki["rogue-client"],
            "CANOPY_TLS_KEY_FILE": self.pki["rogue-client.key"],
            # It cannot fetch the collector's task: profile every request by a
            # task of its own, so that it has batches to (fail to) send.
            "CANOPY_LOCAL_TASKS": "id=task-rogue,endpoint=/checkout,max_sampling_count=1000000",
            "CANOPY_MAX_PARALLEL": "100000",
            "CANOPY_TIMEOUT_MS": "500",
        })
        n = 200
        r = fleet.load(rogue.base + "/checkout", n, 20)
        self.assertEqual((r["ok"], r["failed"]), (n, 0), r["stderr"])
        auth = fleet.wait_until(self.auth_errors, 10, interval=0.2, what="refused handshakes counted")
        fleet.wait_until(lambda: "failed TLS authentication" in self.collector.read_log(), 5, interval=0.2,
                         what="refused handshakes logged")
        rstats = rogue.worker_stats()
        self.assertEqual(len(rstats), 2)
        for pid, st in rstats.items():
            self.assertGreater(st["snapshots"], 0, st)  # it did profile...
            self.assertEqual(st["batches_acked"], 0, st)  # ...and nothing was accepted
            self.assertGreater(st["send_errors"], 0, st)  # the agent sees its requests time out
            self.assertEqual(st["commands_received"], 0, st)
        self.assertEqual(self.collector.rows("task-rogue"), [])
        self.assertFalse([x for x in self.collector.rows(TASK) if x["service"] == "rogue"])
        print("rogue fleet: %d requests served, %d snapshots taken, 0 acked; collector auth errors %d"
              % (r["ok"], sum(st["snapshots"] for st in rstats.values()), auth), file=sys.stderr)
        for line in self.collector.read_log().splitlines():
            if "failed TLS authentication" in line:
                print("collector: " + line.strip(), file=sys.stderr)
                break

        # --- the collector still serves the good fleet.
        before = {x["traceSegmentId"] for x in self.collector.rows(TASK)}
        r = fleet.load(good.base + "/checkout", 20, 5)
        self.assertEqual(r["failed"], 0, r["stderr"])
        rows = fleet.wait_until(
            lambda: (lambda rows: rows if {x["traceSegmentId"] for x in rows} - before else None)(
                self.collector.rows(TASK)), 10, interval=0.2, what="new segments from the good fleet")
        fleet.check_segments(self, rows)

    def test_bad_settings_reported_at_start(self):
        url = "tls+tcp://127.0.0.1:%d" % fleet.free_port()  # nobody listens: the agent never gets that far
        cases = [
            ({"CANOPY_COLLECTOR": url, "CANOPY_TLS_CA_FILE": self.pki["ca"],
              "CANOPY_TLS_CERT_FILE": self.pki["client"]},
             "CANOPY_TLS_CERT_FILE is set without CANOPY_TLS_KEY_FILE"),
            ({"CANOPY_COLLECTOR": url, "CANOPY_TLS_CA_FILE": self.work.join("pki", "missing.pem")},
             "CANOPY_TLS_CA_FILE=%s: No such file or directory" % self.work.join("pki", "missing.pem")),
            ({"CANOPY_COLLECTOR": "ipc://" + self.work.join("c.sock"), "CANOPY_TLS_CA_FILE": self.pki["ca"]},
             "CANOPY_TLS_CA_FILE is set but the collector URL CANOPY_COLLECTOR=ipc://"),
        ]
        for i, (env, reason) in enumerate(cases):
            f = self.fleet(workers=1, name="bad%d" % i, wait_agent=False, env=env)
            fleet.wait_until(lambda: "canopy agent failed to start" in f.read_log(), 15, interval=0.1,
                             what="the start failure in gunicorn's log")
            log = f.read_log()
            line = [x for x in log.splitlines() if "canopy agent failed to start" in x][0]
            print("bad%d: %s" % (i, line), file=sys.stderr)
            self.assertIn(reason, line)
            self.assertNotIn("canopy agent started", log)
            self.assertNotIn("Traceback", log)
            r = fleet.load(f.base + "/checkout", 20, 5)
            self.assertEqual((r["ok"], r["failed"]), (20, 0), r["stderr"])
            st = f.worker_stats(tries=5)
            self.assertEqual([s["running"] for s in st.values()], [False])
            f.stop()


if __name__ == "__main__":
    unittest.main()
