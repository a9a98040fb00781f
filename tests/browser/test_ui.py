"""Browser test of the web UI: headless Chromium (Debian's) drives /ui through
the DevTools protocol over a pipe (--remote-debugging-pipe: no websocket
library, no browser download, nothing from the internet).

It creates a task through the form, checks the task appears in the list,
sends snapshots for it with canopy-loadgen, waits until the live flame graph
in the page has frames, and saves a screenshot PNG as the test's artifact.

    test_ui.py --bin build/bin --screenshot build/tests/browser/ui.png
"""
import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "admin"))
import adminutil as au  # noqa: E402

BIN = None
SCREENSHOT = None
SKIP = 77  # ctest SKIP_RETURN_CODE

CONFIG = """\
receivers:
  nng:
    listen: [ipc://@DIR@/c.sock]
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  live: {}
service:
  telemetry:
    http:
      listen: @ADMIN@
  pipelines:
    profiles:
      receivers: [nng]
      processors: [merge_by_task]
      exporters: [live]
"""


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium spoken to with the DevTools protocol over fds 3 and 4."""

    def __init__(self, binary):
        self.profile = tempfile.mkdtemp(prefix="canopy-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                "--user-data-dir=" + self.profile, "--remote-debugging-pipe", "about:blank"]
        # The protocol pipe must be fds 3 (commands in) and 4 (replies out) in the browser.
        self.proc = subprocess.Popen(["/bin/sh", "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (to_child_r, from_child_w),
                                      binary] + args,
                                     pass_fds=(to_child_r, from_child_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.events = []

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self.from_child], [], [], left)
            if ready:
                data = os.read(self.from_child, 1 << 20)
                if not data:
                    raise RuntimeError("chromium closed the protocol pipe (exit %s)" % self.proc.poll())
                self.buf += data
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            self.events.append(reply)

    def eval(self, session, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session)
        if "exceptionDetails" in r:
            raise RuntimeError("JS error in %r: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")


class WebUi(unittest.TestCase):
    def setUp(self):
        self.c = au.Collector(BIN, CONFIG).start()
        self.browser = Chromium(find_chromium())

    def tearDown(self):
        self.browser.close()
        rc = self.c.stop()
        log = self.c.read_log()
        self.c.cleanup()
        self.assertEqual(rc, 0, log[-3000:])

    def test_create_task_and_see_flame_graph(self):
        b = self.browser
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.call("Emulation.setDeviceMetricsOverride",
               {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, s)
        b.call("Page.enable", {}, s)
        b.call("Page.navigate", {"url": self.c.admin + "/ui"}, s)
        au.wait_until(lambda: b.eval(s, "document.readyState === 'complete' && "
                                        "!!document.querySelector('#tasks tbody tr')"), 20, what="the page")
        self.assertEqual(b.eval(s, "document.title"), "canopy")
        au.wait_until(lambda: b.eval(s, "document.getElementById('health').textContent") == "ready", 10,
                      what="the readiness badge")

        # Fill the form as a user would, and submit it with its button.
        b.eval(s, """(() => {
            const f = document.getElementById('create-form');
            const set = (name, v) => { const i = f.elements[name]; i.focus(); i.value = v;
                                       i.dispatchEvent(new Event('input', {bubbles: true})); };
            set('service', 'loadgen'); set('endpoint', '/checkout'); set('duration', '5m');
            set('dump_period', '10ms'); set('max_sampling_count', '9'); set('id', 'task-0');
            document.getElementById('create-button').click();
        })()""")
        au.wait_until(lambda: b.eval(s, "!!document.querySelector('#tasks tr[data-id=\"task-0\"]')"), 10,
                      what="the new task in the list")
        self.assertIn("Created task-0", b.eval(s, "document.getElementById('create-result').textContent"))
        t = self.c.task("task-0")
        self.assertEqual((t["source"], t["status"], t["service"], t["max_sampling_count"]),
                         ("admin", "running", "loadgen", 9))
        row = "document.querySelector('#tasks tr[data-id=\"task-0\"]')"
        self.assertIn("running", b.eval(s, row + ".textContent"))

        # Snapshots for the task (loadgen's first task id is task-0).
        lg = au.loadgen(BIN, "ipc://%s/c.sock" % self.c.dir, agents=3, batches=8, batch_size=100, depth=10, tasks=1)
        total = int(lg["snapshots"])
        au.wait_until(lambda: b.eval(s, row + ".querySelector('.snapshots').textContent") == str(total), 20,
                      what="the snapshot count in the list")
        self.assertEqual(b.eval(s, row + ".querySelector('.agents').textContent"), "3")
        frames = au.wait_until(lambda: b.eval(s, """(() => {
            const d = document.getElementById('flame').contentDocument;
            const all = d && d.querySelector('#frames g');
            if (!all || !all.querySelector('title').textContent.startsWith('all\\n(%d samples')) return 0;
            return d.querySelectorAll('#frames g').length; })()""" % total), 20, what="a flame graph with frames")
        self.assertGreater(frames, 10)
        # The picture is interactive: hovering a frame shows its details.
        details = b.eval(s, """(() => {
            const d = document.getElementById('flame').contentDocument;
            const g = d.querySelectorAll('#frames g')[3];
            g.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
            return d.getElementById('details').textContent; })()""")
        self.assertIn("samples", details)
        time.sleep(0.3)
        png = base64.b64decode(b.call("Page.captureScreenshot", {"format": "png"}, s)["data"])
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        os.makedirs(os.path.dirname(SCREENSHOT) or ".", exist_ok=True)
        with open(SCREENSHOT, "wb") as f:
            f.write(png)
        print("screenshot:", SCREENSHOT, file=sys.stderr)

    def test_create_continuous_task(self):
        """The Continuous box swaps Duration for Window and makes a task that never ends."""
        b = self.browser
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.call("Page.enable", {}, s)
        b.call("Page.navigate", {"url": self.c.admin + "/ui"}, s)
        au.wait_until(lambda: b.eval(s, "document.readyState === 'complete' && "
                                        "!!document.querySelector('#tasks tbody tr')"), 20, what="the page")
        shown = """(() => { const f = document.getElementById('create-form');
            return [f.elements.duration.offsetParent !== null, f.elements.window.offsetParent !== null]; })()"""
        self.assertEqual(b.eval(s, shown), [True, False])
        b.eval(s, """(() => {
            const f = document.getElementById('create-form');
            f.elements.continuous.click();
            const set = (name, v) => { const i = f.elements[name]; i.focus(); i.value = v;
                                       i.dispatchEvent(new Event('input', {bubbles: true})); };
            set('service', 'shop'); set('endpoint', '/checkout'); set('window', '5s');
            set('max_sampling_count', '3'); set('id', 'cont-0');
            document.getElementById('create-button').click();
        })()""")
        self.assertEqual(b.eval(s, shown), [False, True])
        au.wait_until(lambda: b.eval(s, "!!document.querySelector('#tasks tr[data-id=\"cont-0\"]')"), 10,
                      what="the continuous task in the list")
        t = self.c.task("cont-0")
        self.assertEqual((t["continuous"], t["window_ms"], t["status"], t["remaining_ms"], t["max_sampling_count"]),
                         (True, 5000, "running", None, 3))
        self.assertIn("continuous",
                      b.eval(s, "document.querySelector('#tasks tr[data-id=\"cont-0\"]').textContent"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--screenshot", required=True)
    args, rest = ap.parse_known_args()
    BIN = os.path.abspath(args.bin)
    SCREENSHOT = os.path.abspath(args.screenshot)
    if not find_chromium():
        print("SKIP: chromium is not installed (Debian package chromium)", file=sys.stderr)
        sys.exit(SKIP)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
