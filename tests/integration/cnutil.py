"""Shared helpers for integration tests: run canopy on a config, wait, stop."""
import os
import signal
import subprocess
import tempfile
import time


class Collector:
    """A `canopy run` process on a config written to a temp dir."""

    def __init__(self, bin_dir, config_text, workdir=None, env=None):
        """config_text None runs the embedded default config (no -c)."""
        self.bin_dir = bin_dir
        self.workdir = workdir or tempfile.mkdtemp(prefix="canopy-it-")
        self.config = None
        if config_text is not None:
            self.config = os.path.join(self.workdir, "canopy.yaml")
            with open(self.config, "w") as f:
                f.write(config_text.replace("@DIR@", self.workdir))
        self.log_path = os.path.join(self.workdir, "canopy.log")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def start(self, ready_timeout=10):
        self.log = open(self.log_path, "ab")
        cmd = [os.path.join(self.bin_dir, "canopy"), "run"] + (["-c", self.config] if self.config else [])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("canopy exited early:\n" + self.read_log())
            if b"] ready" in open(self.log_path, "rb").read():
                return self
            time.sleep(0.05)
        raise RuntimeError("canopy did not become ready:\n" + self.read_log())

    def stop(self, timeout=60):
        """SIGTERM, wait for the drain; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("canopy did not stop within %ss" % timeout)
        self.log.close()
        return self.proc.returncode

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def loadgen(bin_dir, url, agents, batches, batch_size, depth, tasks, timeout=120, extra=()):
    """Runs canopy-loadgen; returns its parsed last line as a dict."""
    cmd = [os.path.join(bin_dir, "canopy-loadgen"), "--url", url, "--agents", str(agents),
           "--batches", str(batches), "--batch-size", str(batch_size), "--depth", str(depth),
           "--tasks", str(tasks), "--quiet", *extra]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, text=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0:
        raise RuntimeError("loadgen failed (%d): %s\n%s" % (out.returncode, last, out.stderr))
    return {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
