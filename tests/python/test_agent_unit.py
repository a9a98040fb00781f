"""canopy_agent in one process, no collector needed: frame walking, the
greenlet switch callback, sampling and thread modes, task limits, the
middleware. Snapshots are read through _canopy.capture(), a test hook that
copies every snapshot the library accepted.
"""

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import greenlet

import canopy_agent
from canopy_agent import _canopy

THIS = os.path.abspath(__file__)
if THIS.endswith((".pyc", ".pyo")):
    THIS = THIS[:-1]
NOWHERE = "ipc://" + os.path.join(tempfile.gettempdir(), "canopy-unit-nobody-%d.sock" % os.getpid())


def sig(func_name, line):
    return "%s.%s: %d" % (__file__, func_name, line)


class AgentTestCase(unittest.TestCase):
    mode = "greenlet"
    settings = {}

    def setUp(self):
        canopy_agent.stop()
        self.assertEqual(greenlet.gettrace(), None)
        kw = dict(collector=NOWHERE, service="unit", mode=self.mode, command_poll_ms=0, shutdown_timeout_ms=100)
        kw.update(self.settings)
        self.assertEqual(canopy_agent.start(**kw), self.mode)
        self.captured = []
        _canopy.capture(self.captured)

    def tearDown(self):
        canopy_agent.stop()
        self.assertFalse(isinstance(greenlet.gettrace(), _canopy.Tracer))


def traceback_of_here():
    import traceback

    return traceback.extract_stack(sys._getframe(1))


def leaf_here():
    return _canopy.walk_current()


def middle():
    return leaf_here()


class FrameWalk(AgentTestCase):
    def test_signature_format_root_first(self):
        line = sys._getframe().f_lineno + 1
        sigs = middle()
        code = leaf_here.__code__
        self.assertEqual(sigs[-1], "%s.leaf_here: %d" % (code.co_filename, code.co_firstlineno + 1))
        self.assertEqual(sigs[-2], "%s.middle: %d" % (code.co_filename, middle.__code__.co_firstlineno + 1))
        self.assertEqual(sigs[-3], "%s.test_signature_format_root_first: %d" % (code.co_filename, line))
        # The root (outermost) frame comes first: the script's <module>.
        self.assertIn(".<module>: ", sigs[0])
        self.assertEqual(len(sigs), len(traceback_of_here()) + 2)

    def test_cache_reused_and_lines_distinct(self):
        a = leaf_here()
        b = leaf_here()
        self.assertEqual(a[-1], b[-1])
        self.assertNotEqual(a[-2], b[-2])  # two call sites, two lines


class DepthCap(AgentTestCase):
    settings = {"max_stack_depth": 5}

    def test_keeps_leaf_frames(self):
        def recurse(n):
            if n == 0:
                return leaf_here()
            return recurse(n - 1)

        sigs = recurse(30)
        self.assertEqual(len(sigs), 5)
        self.assertIn(".leaf_here: ", sigs[-1])
        self.assertTrue(all(".recurse: " in s for s in sigs[:-1]), sigs)
        self.assertGreater(_canopy.stats()["frames_truncated"], 0)


def profiled_work(n, hub):
    for _ in range(n):
        profiled_step(hub)


def profiled_step(hub):
    hub.switch()


def other_work(n, hub):
    for _ in range(n):
        other_step(hub)


def other_step(hub):
    hub.switch()


class GreenletCorrectness(AgentTestCase):
    """Two greenlets interleave; only one is profiled; every snapshot is its own."""

    def test_only_profiled_greenlet(self):
        hub = greenlet.getcurrent()
        a = greenlet.greenlet(lambda: profiled_work(50, hub))
        b = greenlet.greenlet(lambda: other_work(50, hub))
        key = _canopy.begin("task-g", "segment-a", target=a)
        self.assertIs(key, a)
        for _ in range(51):  # round robin, like a hub
            if not a.dead:
                a.switch()
            if not b.dead:
                b.switch()
        self.assertTrue(a.dead and b.dead)
        n = _canopy.end(target=key)
        self.assertGreater(n, 90)  # switched in and out 50 times
        self.assertEqual(len(self.captured), n)
        for task, seg, t, seq, frames in self.captured:
            self.assertEqual((task, seg), ("task-g", "segment-a"))
            joined = "\n".join(frames)
            self.assertIn(".profiled_work: ", joined)
            self.assertNotIn(".other_work: ", joined)
            self.assertNotIn(".other_step: ", joined)
        self.assertEqual([c[3] for c in self.captured], list(range(n)))
        times = [c[2] for c in self.captured]
        self.assertEqual(times, sorted(times))
        # Switch-out snapshots come from origin.gr_frame, switch-in ones
        # from the live frames: both end in profiled_step's hub.switch().
        self.assertTrue(all(".profiled_step: " in c[4][-1] for c in self.captured))

    def test_unprofiled_switches_take_nothing(self):
        hub = greenlet.getcurrent()
        b = greenlet.greenlet(lambda: other_work(20, hub))
        while not b.dead:
            b.switch()
        self.assertEqual(self.captured, [])
        st = _canopy.stats()
        self.assertGreaterEqual(st["switches"], 40)
        self.assertEqual(st["snapshots"], 0)

    def test_gevent_interleaving(self):
        import gevent

        def io_bound_profiled():
            for _ in range(20):
                gevent.sleep(0)

        def io_bound_other():
            for _ in range(20):
                gevent.sleep(0)

        keys = []

        def profiled_request():
            keys.append(_canopy.begin("task-g", "seg-gevent"))
            try:
                io_bound_profiled()
            finally:
                keys.append(_canopy.end())

        gevent.joinall([gevent.spawn(profiled_request), gevent.spawn(io_bound_other), gevent.spawn(io_bound_other)])
        self.assertIsNotNone(keys[0])
        self.assertGreater(keys[1], 30)
        for c in self.captured:
            self.assertIn(".io_bound_profiled: ", "\n".join(c[4]))
            self.assertNotIn(".io_bound_other: ", "\n".join(c[4]))

    def test_min_duration_threshold(self):
        hub = greenlet.getcurrent()
        a = greenlet.greenlet(lambda: profiled_work(1000, hub))
        t0 = time.time() * 1000
        key = _canopy.begin("task-g", "seg-threshold", min_duration_ms=100, target=a)
        deadline = time.time() + 0.25
        while time.time() < deadline:
            a.switch()
            time.sleep(0.005)
        _canopy.end(target=key)
        self.assertTrue(self.captured)
        self.assertGreater(_canopy.stats()["snapshots_early"], 0)
        self.assertGreaterEqual(min(c[2] for c in self.captured), t0 + 100 - 1)
        self.assertEqual([c[3] for c in self.captured], list(range(len(self.captured))))
        a.throw(greenlet.GreenletExit)

    def test_registry_many_segments(self):
        hub = greenlet.getcurrent()
        gs = [greenlet.greenlet(lambda: profiled_work(3, hub)) for _ in range(300)]
        keys = [_canopy.begin("task-g", "seg-%d" % i, target=g) for i, g in enumerate(gs)]
        self.assertTrue(all(k is not None for k in keys))
        self.assertIsNone(_canopy.begin("task-g", "dup", target=gs[0]))  # already profiled
        for _ in range(4):
            for g in gs:
                if not g.dead:
                    g.switch()
        counts = [_canopy.end(target=k) for k in keys]
        self.assertTrue(all(c == 6 for c in counts), set(counts))
        self.assertEqual(_canopy.end(target=gs[0]), -1)
        by_seg = {}
        for c in self.captured:
            by_seg.setdefault(c[1], []).append(c[3])
        self.assertEqual(len(by_seg), 300)
        self.assertTrue(all(v == list(range(6)) for v in by_seg.values()))
        self.assertEqual(_canopy.stats()["segments_active"], 0)


class RegistryBound(AgentTestCase):
    settings = {"max_segments": 8}

    def test_full_registry_refuses(self):
        hub = greenlet.getcurrent()
        gs = [greenlet.greenlet(lambda: hub.switch()) for _ in range(10)]
        keys = [_canopy.begin("t", "s%d" % i, target=g) for i, g in enumerate(gs)]
        self.assertEqual(sum(k is not None for k in keys), 8)
        self.assertEqual(_canopy.stats()["registry_full"], 2)
        for k in keys:
            if k is not None:
                _canopy.end(target=k)


class ChainedTracer(unittest.TestCase):
    """A trace function installed before canopy keeps receiving every event."""

    def tearDown(self):
        canopy_agent.stop()
        greenlet.settrace(None)

    def run_switches(self):
        hub = greenlet.getcurrent()
        a = greenlet.greenlet(lambda: profiled_work(25, hub))
        b = greenlet.greenlet(lambda: other_work(25, hub))
        key = _canopy.begin("t", "chained", target=a) if canopy_agent.running() else None
        while not (a.dead and b.dead):
            if not a.dead:
                a.switch()
            if not b.dead:
                b.switch()
        if key is not None:
            _canopy.end(target=key)

    def test_previous_tracer_sees_every_event(self):
        canopy_agent.stop()
        baseline = []
        greenlet.settrace(lambda event, args: baseline.append((event, args[0], args[1]) and event))
        self.run_switches()
        greenlet.settrace(None)

        events = []

        def user_tracer(event, args):
            events.append(event)

        greenlet.settrace(user_tracer)
        canopy_agent.start(collector=NOWHERE, service="unit", mode="greenlet", command_poll_ms=0,
                           shutdown_timeout_ms=100)
        tracer = greenlet.gettrace()
        self.assertIsInstance(tracer, _canopy.Tracer)
        self.assertIs(tracer.prev, user_tracer)
        captured = []
        _canopy.capture(captured)
        self.run_switches()
        self.assertEqual(len(events), len(baseline))
        self.assertTrue(captured)
        canopy_agent.stop()
        # Uninstalling puts the user's tracer back.
        self.assertIs(greenlet.gettrace(), user_tracer)

    def test_chained_error_propagates_like_without_canopy(self):
        def bad_tracer(event, args):
            raise ValueError("user tracer bug")

        greenlet.settrace(bad_tracer)
        canopy_agent.start(collector=NOWHERE, service="unit", mode="greenlet", command_poll_ms=0,
                           shutdown_timeout_ms=100)
        g = greenlet.greenlet(lambda: 1)
        with self.assertRaises(ValueError):
            g.switch()
        self.assertEqual(_canopy.stats()["chained_errors"], 1)
        # greenlet removed the trace function, as it would have without us.
        self.assertIsNone(greenlet.gettrace())


def spin_profiled(stop_at):
    x = 0
    while time.time() < stop_at:
        x = spin_profiled_inner(x)
        greenlet.getcurrent().parent.switch()


def spin_profiled_inner(x):
    for i in range(2000):
        x += i
    return x


def spin_other(stop_at):
    x = 0
    while time.time() < stop_at:
        x = spin_other_inner(x)
        greenlet.getcurrent().parent.switch()


def spin_other_inner(x):
    for i in range(2000):
        x += i
    return x


class SamplingMode(AgentTestCase):
    mode = "sampling"

    def test_samples_only_running_profiled_greenlet(self):
        stop_at = time.time() + 0.6
        run_a = lambda: spin_profiled(stop_at)  # noqa: E731
        a = greenlet.greenlet(run_a)
        b = greenlet.greenlet(lambda: spin_other(stop_at))
        key = _canopy.begin("task-s", "seg-s", dump_period_ms=10, target=a)
        while not (a.dead and b.dead):
            if not a.dead:
                a.switch()
            if not b.dead:
                b.switch()
        n = _canopy.end(target=key)
        # ~half of 600 ms is spent in a: expect some tens of 10 ms samples.
        self.assertGreater(n, 5)
        self.assertLess(n, 80)
        a_root = "%s.<lambda>: %d" % (run_a.__code__.co_filename, run_a.__code__.co_firstlineno)
        in_spin = 0
        for c in self.captured:
            # Only a's own stack. A sample may land as a first starts, before
            # it calls spin_profiled (3.13 runs the pending call at the
            # lambda's first instruction when begin() woke the sampler).
            self.assertEqual(c[4][0], a_root)
            self.assertNotIn(".spin_other", "\n".join(c[4]))
            in_spin += any(".spin_profiled" in s for s in c[4])
        self.assertGreaterEqual(in_spin, n - 1)
        self.assertEqual([c[3] for c in self.captured], list(range(n)))
        self.assertGreater(_canopy.stats()["samples"], 0)


def thread_busy(stop_at):
    x = 0
    while time.time() < stop_at:
        x = thread_busy_inner(x)


def thread_busy_inner(x):
    for i in range(1000):
        x += i
    return x


def thread_other(stop_at):
    x = 0
    while time.time() < stop_at:
        for i in range(1000):
            x += i


class ThreadMode(AgentTestCase):
    mode = "thread"

    def test_samples_profiled_thread(self):
        stop_at = time.time() + 0.8
        results = {}

        def profiled():
            results["key"] = _canopy.begin("task-t", "seg-t", dump_period_ms=10)
            thread_busy(stop_at)
            results["n"] = _canopy.end()

        ts = [threading.Thread(target=profiled), threading.Thread(target=thread_other, args=(stop_at,))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertIsNotNone(results["key"])
        self.assertGreaterEqual(results["n"], 3)  # ~80 on an idle machine
        for c in self.captured:
            self.assertIn(".thread_busy", "\n".join(c[4]))
            self.assertNotIn(".thread_other", "\n".join(c[4]))
        self.assertEqual([c[3] for c in self.captured], list(range(results["n"])))


def simple_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def slow_app(environ, start_response):
    import gevent

    gevent.sleep(0.001)  # a switch, so the profiled request has a snapshot
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Middleware(AgentTestCase):
    def environ(self, path):
        return {"PATH_INFO": path, "REQUEST_METHOD": "GET"}

    def call(self, app, path):
        status = []
        result = app(self.environ(path), lambda s, h, exc_info=None: status.append(s))
        body = b"".join(result)
        if hasattr(result, "close"):
            result.close()
        return status[0], body

    def test_limits_and_iterable_response(self):
        import gevent

        canopy_agent.add_task("task-m", "/checkout", max_sampling_count=3)

        def checkout_handler(environ, start_response):
            start_response("200 OK", [])

            def body():
                gevent.sleep(0.001)  # switches while streaming
                yield b"a"
                gevent.sleep(0.001)
                yield b"b"

            return body()

        app = canopy_agent.wsgi_middleware(checkout_handler)
        self.assertIs(canopy_agent.wsgi_middleware(app), app)
        jobs = [gevent.spawn(self.call, app, "/checkout") for _ in range(10)]
        jobs += [gevent.spawn(self.call, app, "/other") for _ in range(5)]
        gevent.joinall(jobs)
        self.assertTrue(all(j.value == ("200 OK", b"ab") for j in jobs))
        segs = {c[1] for c in self.captured}
        self.assertEqual(len(segs), 3)  # max_sampling_count
        for seg in segs:
            seqs = [c[3] for c in self.captured if c[1] == seg]
            self.assertEqual(seqs, list(range(len(seqs))))
            # The generator body ran while profiled (iterable responses count).
            self.assertTrue(any(".body: " in "\n".join(c[4]) for c in self.captured if c[1] == seg))
        task = [t for t in canopy_agent.stats()["tasks"] if t["id"] == "task-m"][0]
        self.assertEqual((task["started"], task["running"], task["profiled"]), (3, 0, 3))
        self.assertEqual(_canopy.stats()["segments_active"], 0)

    def test_short_requests_give_their_place_back(self):
        canopy_agent.add_task("task-short", "/fast", max_sampling_count=1, min_duration_ms=10000)
        app = canopy_agent.wsgi_middleware(simple_app)
        for _ in range(5):
            self.assertEqual(self.call(app, "/fast"), ("200 OK", b"ok"))
        task = [t for t in canopy_agent.stats()["tasks"] if t["id"] == "task-short"][0]
        self.assertEqual((task["started"], task["profiled"], task["refused"]), (0, 0, 0))

    def test_app_exception_ends_segment(self):
        canopy_agent.add_task("task-x", "/boom", max_sampling_count=5)

        def boom(environ, start_response):
            raise RuntimeError("app bug")

        app = canopy_agent.wsgi_middleware(boom)
        with self.assertRaises(RuntimeError):
            app(self.environ("/boom"), lambda *a: None)
        self.assertEqual(_canopy.stats()["segments_active"], 0)

    def test_expired_task_profiles_nothing(self):
        canopy_agent.add_task("task-old", "/checkout", duration_min=1,
                              start_time_ms=int(time.time() * 1000) - 120000)
        app = canopy_agent.wsgi_middleware(simple_app)
        self.call(app, "/checkout")
        self.assertEqual(_canopy.stats()["segments_begun"], 0)

    def test_continuous_task_windows(self):
        """A continuous task never ends; under a steady load each window admits exactly max_sampling_count
        requests, one at a random instant in each k-th of the window (not the window's first ones)."""
        import random

        from canopy_agent import _tasks

        clock = [1e12]  # epoch ms, a multiple of the 10 s window
        rng = random.Random(7)
        old = (_tasks._time, _tasks._random)
        _tasks._time, _tasks._random = (lambda: clock[0] / 1000.0), rng.random
        try:
            table = _tasks.TaskTable(max_parallel=5)
            task = _tasks.Task(canopy_agent._config.local_task("c", "/c", duration_min=0, max_sampling_count=5,
                                                                start_time_ms=0, continuous=True, window_ms=10000))
            self.assertTrue(task.active(clock[0] + 10 * 365 * 86400e3))  # ten years on
            picked = []  # (window, index in window) of every admitted request
            for w in range(40):
                for i in range(1000):  # 100 requests/s, steady
                    clock[0] = 1e12 + w * 10000 + i * 10
                    if table.admit(task):
                        picked.append((w, i))
                        table.release(task, 1 if i % 2 else 0)  # a spent place stays spent
            per_window = [sum(1 for p in picked if p[0] == w) for w in range(40)]
            self.assertEqual(per_window, [5] * 40)
            self.assertEqual(task.refused, 40 * 995)
            # Spread at random: one per fifth of the window, not at a fixed place in it.
            for part in range(5):
                at = [i - part * 200 for w, i in picked if part * 200 <= i < (part + 1) * 200]
                self.assertEqual(len(at), 40)
                self.assertTrue(60 < sum(at) / len(at) < 140, (part, sum(at) / len(at)))
            self.assertNotEqual(picked[0][1], 0)
            # After a lull, the places whose instants passed go to the next requests.
            clock[0] = 1e12 + 50 * 10000 + 9999
            self.assertEqual([table.admit(task) for _ in range(7)], [True] * 5 + [False] * 2)
        finally:
            _tasks._time, _tasks._random = old

    def test_continuous_task_profiles_through_middleware(self):
        from canopy_agent import _tasks

        canopy_agent.add_task("task-c", "/cont", max_sampling_count=2, continuous=True, window_ms=60000)
        app = canopy_agent.wsgi_middleware(slow_app)
        old = _tasks._time
        _tasks._time = lambda: (60000 * 30000000 - 1) / 1000.0  # a window's last ms: both places' instants passed
        try:
            for _ in range(6):
                self.assertEqual(self.call(app, "/cont"), ("200 OK", b"ok"))
        finally:
            _tasks._time = old
        task = [t for t in canopy_agent.stats()["tasks"] if t["id"] == "task-c"][0]
        self.assertEqual((task["continuous"], task["profiled"], task["refused"]), (True, 2, 4))
        self.assertEqual(len({c[1] for c in self.captured}), 2)

    def test_not_running_is_transparent(self):
        canopy_agent.stop()
        app = canopy_agent.wsgi_middleware(simple_app)
        self.assertEqual(self.call(app, "/checkout"), ("200 OK", b"ok"))

    def test_segment_ids_unique(self):
        ids = {canopy_agent.segment_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)


class Profile(AgentTestCase):
    def test_context_manager(self):
        import gevent

        with canopy_agent.profile("task-p") as sid:
            self.assertIsNotNone(sid)
            gevent.sleep(0.001)
        self.assertTrue(self.captured)
        self.assertTrue(all(c[1] == sid for c in self.captured))


class Bounded(AgentTestCase):
    """Collector absent: memory stays bounded, the app is never blocked, drops are counted."""

    settings = {"max_buffered_bytes": 64 * 1024, "max_batch_snapshots": 64}

    def test_drops_counted(self):
        hub = greenlet.getcurrent()
        a = greenlet.greenlet(lambda: profiled_work(10 ** 9, hub))
        _canopy.capture(None)
        key = _canopy.begin("task-b", "seg-b", target=a)
        t0 = time.time()
        for _ in range(20000):
            a.switch()
        dt = time.time() - t0
        _canopy.end(target=key)
        st = canopy_agent.stats()
        self.assertLessEqual(st["bytes_buffered"], 64 * 1024 + 64 * 1024)
        self.assertGreater(st["lib_snapshots_dropped"] + st["snapshots_dropped"] + st["batches_dropped"], 0)
        self.assertLess(dt, 5.0)
        a.throw(greenlet.GreenletExit)


class Modes(unittest.TestCase):
    def run_py(self, code):
        env = dict(os.environ)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.strip()

    def test_auto_without_gevent_is_thread(self):
        code = "import canopy_agent as c; print(c.start(collector=%r, command_poll_ms=0, shutdown_timeout_ms=100)); c.stop()" % NOWHERE
        self.assertEqual(self.run_py(code), "thread")

    def test_auto_with_gevent_patch_is_greenlet(self):
        code = ("from gevent import monkey; monkey.patch_all()\n"
                "import canopy_agent as c; print(c.start(collector=%r, command_poll_ms=0, shutdown_timeout_ms=100)); c.stop()" % NOWHERE)
        self.assertEqual(self.run_py(code), "greenlet")

    def test_env_mode(self):
        code = "import canopy_agent as c; print(c.start(collector=%r, command_poll_ms=0, shutdown_timeout_ms=100)); c.stop()" % NOWHERE
        env_code = "import os; os.environ['CANOPY_MODE']='sampling'\n" + code
        self.assertEqual(self.run_py(env_code), "sampling")

    def test_bad_mode(self):
        with self.assertRaises(ValueError):
            canopy_agent.start(collector=NOWHERE, mode="nonsense")
        self.assertFalse(canopy_agent.running())

    def test_fork_child_never_crashes(self):
        code = """
import os, sys, greenlet, canopy_agent
from canopy_agent import _canopy
canopy_agent.start(collector=%r, mode="greenlet", command_poll_ms=0, shutdown_timeout_ms=100)
pid = os.fork()
if pid == 0:
    cap = []
    _canopy.capture(cap)
    hub = greenlet.getcurrent()
    g = greenlet.greenlet(lambda: [hub.switch() for _ in range(3)])
    k = _canopy.begin("t", "child", target=g)
    while not g.dead:
        g.switch()
    n = _canopy.end(target=k)
    st = canopy_agent.stats()
    # If the parent's native thread had already started nng when it forked,
    # the library refuses to send from the child (nng would panic) and counts
    # the drops; otherwise the child profiles normally. Never a crash.
    ok = st["pid"] == os.getpid() and (
        (n == 6 and len(cap) == 6) or (n == 0 and st["lib_snapshots_dropped"] == 6))
    if not ok:
        print("child:", n, len(cap), st, file=sys.stderr, flush=True)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
canopy_agent.stop()
print(os.waitstatus_to_exitcode(status))
""" % NOWHERE
        self.assertEqual(self.run_py(code), "0")


class TlsSettings(unittest.TestCase):
    """CANOPY_TLS_* / tls_* settings that cannot work fail start() with the
    reason; the files are checked (readable PEM of the right kind) before the
    library's native thread ever reads them. tests/python/test_e2e_tls.py
    drives real TLS."""

    TLS = "tls+tcp://127.0.0.1:1"

    def setUp(self):
        canopy_agent.stop()
        self.dir = tempfile.mkdtemp(prefix="canopy-unit-tls-")
        self.ca = self.pem("ca.pem", "CERTIFICATE")
        self.cert = self.pem("agent.pem", "CERTIFICATE")
        self.key = self.pem("agent.key", "EC PRIVATE KEY")
        self.env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CANOPY_")}

    def tearDown(self):
        canopy_agent.stop()
        for k in [k for k in os.environ if k.startswith("CANOPY_")]:
            del os.environ[k]
        os.environ.update(self.env)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def pem(self, name, kind, extra=""):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("%s-----BEGIN %s-----\nAAAA\n-----END %s-----\n" % (extra, kind, kind))
        return path

    def refused(self, reason, **kw):
        kw.setdefault("collector", self.TLS)
        with self.assertRaises(ValueError) as cm:
            canopy_agent.start(service="unit", command_poll_ms=0, shutdown_timeout_ms=100, **kw)
        self.assertIn(reason, str(cm.exception))
        self.assertFalse(canopy_agent.running())
        return str(cm.exception)

    def test_tls_settings_need_a_tls_url(self):
        self.refused("tls_ca_file is set but the collector URL collector=%s is not tls+tcp://" % NOWHERE,
                     collector=NOWHERE, tls_ca_file=self.ca)
        self.refused("tls_server_name is set", collector="tcp://127.0.0.1:1", tls_server_name="x")
        os.environ["CANOPY_TLS_CA_FILE"] = self.ca
        self.refused("CANOPY_TLS_CA_FILE is set but the collector URL collector=", collector=NOWHERE)
        os.environ["CANOPY_TLS_CA_FILE"] = ""  # empty is unset
        canopy_agent.start(service="unit", collector=NOWHERE, command_poll_ms=0, shutdown_timeout_ms=100)
        self.assertTrue(canopy_agent.running())

    def test_tls_url_needs_a_ca(self):
        self.refused("needs tls_ca_file")
        os.environ["CANOPY_COLLECTOR"] = self.TLS
        self.refused("the collector URL CANOPY_COLLECTOR=%s needs CANOPY_TLS_CA_FILE" % self.TLS, collector=None)

    def test_cert_and_key_go_together(self):
        self.refused("tls_cert_file is set without tls_key_file", tls_ca_file=self.ca, tls_cert_file=self.cert)
        os.environ["CANOPY_TLS_KEY_FILE"] = self.key
        self.refused("CANOPY_TLS_KEY_FILE is set without CANOPY_TLS_CERT_FILE", tls_ca_file=self.ca)

    def test_files_checked(self):
        missing = os.path.join(self.dir, "missing.pem")
        self.refused("tls_ca_file=%s: No such file or directory" % missing, tls_ca_file=missing)
        self.refused("tls_ca_file=%s: not a regular file" % self.dir, tls_ca_file=self.dir)
        self.refused("no PEM certificate", tls_ca_file=self.key)
        self.refused("tls_cert_file=%s: no PEM certificate" % self.key, tls_ca_file=self.ca,
                     tls_cert_file=self.key, tls_key_file=self.key)
        self.refused("tls_key_file=%s: no PEM private key" % self.cert, tls_ca_file=self.ca,
                     tls_cert_file=self.cert, tls_key_file=self.cert)
        enc = self.pem("enc.key", "ENCRYPTED PRIVATE KEY")
        self.refused("encrypted", tls_ca_file=self.ca, tls_cert_file=self.cert, tls_key_file=enc)
        legacy = os.path.join(self.dir, "legacy.key")
        with open(legacy, "w") as f:
            f.write("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n")
        self.refused("encrypted", tls_ca_file=self.ca, tls_cert_file=self.cert, tls_key_file=legacy)
        big = os.path.join(self.dir, "big.pem")
        with open(big, "wb") as f:
            f.write(b"x" * (1 << 20))
        self.refused("larger than 1 MiB", tls_ca_file=self.ca, tls_cert_file=big, tls_key_file=self.key)

    def test_extension_refuses_tls_with_a_plain_url(self):
        # The C extension's own guard, for callers that bypass canopy_agent._config.
        for kw, reason in [({"url": NOWHERE, "tls_ca_file": self.ca}, "refusing to send in clear"),
                           ({"url": self.TLS}, "needs tls_ca_file"),
                           ({"url": self.TLS, "tls_ca_file": self.ca, "tls_key_file": self.key}, "go together")]:
            with self.assertRaises(ValueError) as cm:
                _canopy.configure("unit", **kw)
            self.assertIn(reason, str(cm.exception))
            self.assertFalse(_canopy.configured())

    def test_unusable_pem_never_hurts(self):
        # Files that pass the checks but that mbedTLS cannot parse: the native
        # thread counts the failure and retries; the app is never affected.
        mode = canopy_agent.start(service="unit", collector=self.TLS, tls_ca_file=self.ca, tls_cert_file=self.cert,
                                  tls_key_file=self.key, tls_server_name="collector.example", mode="greenlet",
                                  command_poll_ms=50, shutdown_timeout_ms=100)
        self.assertEqual(mode, "greenlet")
        deadline = time.time() + 5
        while time.time() < deadline and canopy_agent.stats()["send_errors"] == 0:
            time.sleep(0.05)
        st = canopy_agent.stats()
        self.assertGreater(st["send_errors"], 0, st)
        self.assertEqual(st["command_queries"], 0, st)
        t0 = time.time()
        canopy_agent.stop()
        self.assertLess(time.time() - t0, 2.0)


class DefaultCollector(unittest.TestCase):
    """Without CANOPY_COLLECTOR the agent sends to the packaged collector's
    socket when it exists (docs/deploy.md), else to ipc:///tmp/canopy.sock."""

    def test_service_socket_when_it_exists(self):
        import socket
        from unittest import mock
        from canopy_agent import _config
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "canopy.sock")
            url = "ipc://" + path
            with mock.patch.object(_config, "SERVICE_COLLECTOR", url), \
                    mock.patch.dict(os.environ, {"CANOPY_COLLECTOR": ""}):
                self.assertEqual(_config.Config(service="s").collector, _config.DEFAULT_COLLECTOR)
                with socket.socket(socket.AF_UNIX) as s:
                    s.bind(path)
                    self.assertEqual(_config.Config(service="s").collector, url)
                self.assertEqual(_config.Config(service="s", collector="tcp://h:1").collector, "tcp://h:1")


if __name__ == "__main__":
    unittest.main()
