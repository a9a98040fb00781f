"""Integration: who may use the admin API (core/admin_auth.c, issue 13 item 5).

  - validate refuses a non-loopback listen without tls and a token (FILE:LINE:COL
    at the listen line), and a token_file that cannot be read (at its line);
    allow_insecure: true passes;
  - a collector on 0.0.0.0 with tls and token_file serves HTTPS; /healthz and
    /readyz need no token; every other call without the token, or with a wrong
    one, gets 401 and counts in canopy_admin_unauthorized_total; with it, 200;
  - `canopy task create|list|cancel --token-file --ca-file` work over HTTPS and
    fail with HTTP 401 without --token-file;
  - token: ${env:...} on loopback without TLS guards the API the same way.

    admin_auth.py --bin build/bin
"""
import argparse
import atexit
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tls"))
import adminutil as au  # noqa: E402
import tlsutil  # noqa: E402

BIN = None

CONFIG = """\
receivers:
  nng:
    listen: [ipc://@DIR@/c.sock]
exporters:
  file:
    directory: @DIR@/out
service:
  telemetry:
    http:
%s
  pipelines:
    profiles:
      receivers: [nng]
      exporters: [file]
"""


def scratch_dir(prefix):
    """A temp dir removed when the test process exits."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    atexit.register(shutil.rmtree, d, True)
    return d


def validate(text):
    d = scratch_dir("canopy-admin-auth-")
    path = os.path.join(d, "canopy.yaml")
    with open(path, "w") as f:
        f.write((CONFIG % text).replace("@DIR@", d))
    r = subprocess.run([os.path.join(BIN, "canopy"), "validate", "-c", path], capture_output=True, text=True)
    return r, path


def line_of(path, needle):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if needle in line:
                return n
    raise AssertionError("%s not in %s" % (needle, path))


class Validate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = tlsutil.make_pki(scratch_dir("canopy-admin-pki-"))

    def test_non_loopback_needs_tls_and_token(self):
        for http in ["      listen: 0.0.0.0:8888",
                     "      listen: 0.0.0.0:8888\n      tls: {cert_file: %s, key_file: %s}" % (
                         self.pki["server"], self.pki["server.key"]),
                     "      listen: 0.0.0.0:8888\n      token: secret"]:
            r, path = validate(http)
            self.assertEqual(r.returncode, 1, r.stderr)
            want = r"^%s:%d:\d+: service::telemetry::http::listen: 0.0.0.0:8888 is not a loopback address" % (
                re.escape(path), line_of(path, "listen: 0.0.0.0"))
            self.assertRegex(r.stderr, re.compile(want, re.M))

    def test_allow_insecure_or_tls_and_token_pass(self):
        with tempfile.NamedTemporaryFile("w", suffix=".token") as tok:
            tok.write("s3cret\n")
            tok.flush()
            for http in ["      listen: 0.0.0.0:8888\n      allow_insecure: true",
                         "      listen: 0.0.0.0:8888\n      tls: {cert_file: %s, key_file: %s}\n"
                         "      token_file: %s" % (self.pki["server"], self.pki["server.key"], tok.name)]:
                r, _ = validate(http)
                self.assertEqual(r.returncode, 0, r.stderr)

    def test_unreadable_token_file_and_empty_env_token(self):
        r, path = validate("      listen: 127.0.0.1:8888\n      token_file: /nonexistent/token")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, re.compile(r"^%s:%d:\d+: service::telemetry::http::token_file: "
                                              r"/nonexistent/token: No such file" % (
                                                  re.escape(path), line_of(path, "token_file")), re.M))
        env = dict(os.environ)
        env.pop("CANOPY_TEST_UNSET_TOKEN", None)
        r, path = validate("      listen: 127.0.0.1:8888\n      token: ${env:CANOPY_TEST_UNSET_TOKEN}")
        self.assertEqual(r.returncode, 1)
        self.assertIn("token is empty", r.stderr)


def https_get(url, ca, token=None):
    ctx = ssl.create_default_context(cafile=ca)
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Served(unittest.TestCase):
    def test_tls_and_token_file(self):
        pki = tlsutil.make_pki(scratch_dir("canopy-admin-pki-"))
        port = au.free_port()
        c = au.Collector(BIN, CONFIG % (
            "      listen: 0.0.0.0:%d\n      tls: {cert_file: %s, key_file: %s}\n      token_file: @DIR@/token"
            % (port, pki["server"], pki["server.key"])))
        token_file = os.path.join(c.dir, "token")
        with open(token_file, "w") as f:
            f.write("t0ken-for-the-test\n")
        try:
            c.start()
            base = "https://127.0.0.1:%d" % port
            self.assertEqual(https_get(base + "/healthz", pki["ca"]), (200, "ok\n"))
            self.assertEqual(https_get(base + "/readyz", pki["ca"])[0], 200)
            self.assertEqual(https_get(base + "/api/v1/tasks", pki["ca"])[0], 401)
            self.assertEqual(https_get(base + "/metrics", pki["ca"], token="wrong")[0], 401)
            status, body = https_get(base + "/api/v1/tasks", pki["ca"], token="t0ken-for-the-test")
            self.assertEqual(status, 200, body)
            status, text = https_get(base + "/metrics", pki["ca"], token="t0ken-for-the-test")
            samples, _, _ = au.parse_prometheus(text)
            self.assertEqual(au.metric(samples, "canopy_admin_unauthorized_total"), 2)

            cli = [os.path.join(BIN, "canopy"), "task"]
            auth = ["--admin", base, "--token-file", token_file, "--ca-file", pki["ca"]]
            r = subprocess.run(cli + ["create", "--service", "shop", "--endpoint", "/checkout", "--id", "t1"] + auth,
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run(cli + ["list", "--json"] + auth, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("t1", [t["id"] for t in json.loads(r.stdout)["tasks"]])
            r = subprocess.run(cli + ["list", "--admin", base, "--ca-file", pki["ca"]], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertIn("HTTP 401", r.stderr)
            r = subprocess.run(cli + ["cancel", "t1"] + auth, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            self.assertEqual(c.stop(), 0, c.read_log())
            c.cleanup()

    def test_env_token_on_loopback(self):
        c = au.Collector(BIN, CONFIG % "      listen: @ADMIN@\n      token: ${env:CANOPY_TEST_ADMIN_TOKEN}",
                         env={"CANOPY_TEST_ADMIN_TOKEN": "from-the-env"})
        try:
            c.start()
            self.assertEqual(c.get("/healthz").status, 200)
            self.assertEqual(c.get("/api/v1/tasks").status, 401)
            self.assertEqual(c.get("/api/v1/tasks", headers={"Authorization": "Bearer from-the-env"}).status, 200)
        finally:
            self.assertEqual(c.stop(), 0, c.read_log())
            c.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args, rest = ap.parse_known_args()
    BIN = os.path.abspath(args.bin)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
