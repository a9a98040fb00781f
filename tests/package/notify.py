"""Integration: Type=notify. With NOTIFY_SOCKET set, as systemd sets it,
`canopy run` sends READY=1 once its receivers listen (the ipc socket exists
when READY=1 arrives) and STOPPING=1 on SIGTERM; without NOTIFY_SOCKET it runs
as before (core/notify.c).

    notify.py --bin build/bin
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

BIN = None

CONFIG = """\
receivers:
  nng:
    listen: [ipc://%(dir)s/c.sock]
exporters:
  file:
    directory: %(dir)s/out
service:
  telemetry:
    http:
      listen: ""
  pipelines:
    profiles:
      receivers: [nng]
      exporters: [file]
"""


class Notify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="canopy-notify-", dir="/tmp")
        self.config = os.path.join(self.dir, "canopy.yaml")
        with open(self.config, "w") as f:
            f.write(CONFIG % {"dir": self.dir})

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_ready_then_stopping(self):
        path = os.path.join(self.dir, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(path)
            s.settimeout(20)
            proc = subprocess.Popen([os.path.join(BIN, "canopy"), "run", "-c", self.config],
                                    env=dict(os.environ, NOTIFY_SOCKET=path), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            try:
                msg = s.recv(4096).decode()
                self.assertEqual(msg, "READY=1")
                self.assertTrue(os.path.exists(os.path.join(self.dir, "c.sock")), "READY=1 before listening")
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(s.recv(4096).decode(), "STOPPING=1")
                self.assertEqual(proc.wait(30), 0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def test_no_notify_socket(self):
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        proc = subprocess.Popen([os.path.join(BIN, "canopy"), "run", "-c", self.config], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                if "] ready" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            out = proc.stdout.read()
            self.assertEqual(proc.wait(30), 0)
            self.assertNotIn("sd_notify", out)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args, rest = ap.parse_known_args()
    BIN = os.path.abspath(args.bin)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
