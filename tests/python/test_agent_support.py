"""canopy_agent's interpreter policy and its two frame walkers, in one process.

- The fast walker (CPython's interpreter frames, 3.11 and 3.13 layouts) and
  the public frame API walker give the same signatures, for the running
  stack, a suspended greenlet, generators and a stack cut at max depth.
- An untested interpreter (CANOPY_TEST_PYTHON_VERSION) is refused with one
  line, or profiled with the public walker when CANOPY_ALLOW_UNTESTED_PYTHON.
- Greenlet mode without gevent is refused with one line.
- start() records the versions it found.
"""

import os
import platform
import sys
import tempfile
import unittest
from unittest import mock

import greenlet

import canopy_agent
from canopy_agent import _canopy, _support

NOWHERE = "ipc://" + os.path.join(tempfile.gettempdir(), "canopy-support-nobody-%d.sock" % os.getpid())


def start(**kw):
    settings = dict(collector=NOWHERE, service="unit", mode="thread", command_poll_ms=0, shutdown_timeout_ms=100)
    settings.update(kw)
    return canopy_agent.start(**settings)


def both_walks(walk, *args):
    """[fast, public] results of walk(*args), both called from the same line."""
    out = []
    for name in ("fast", "public"):
        _canopy.frame_walk(name)
        out.append(walk(*args))
    _canopy.frame_walk("fast")
    return out


def deep(n, then):
    if n == 0:
        return then()
    return deep(n - 1, then)


def gen_walk():
    yield both_walks(_canopy.walk_current)


class Case(unittest.TestCase):
    def setUp(self):
        canopy_agent.stop()
        self.env = mock.patch.dict(os.environ)
        self.env.start()
        for name in ("CANOPY_TEST_PYTHON_VERSION", "CANOPY_ALLOW_UNTESTED_PYTHON", "CANOPY_FRAME_WALK"):
            os.environ.pop(name, None)

    def tearDown(self):
        canopy_agent.stop()
        self.env.stop()


@unittest.skipUnless(_canopy.FAST_FRAMES, "no fast frame walker for this interpreter")
class WalkersAgree(Case):
    def setUp(self):
        super().setUp()
        start()

    def test_running_stack(self):
        fast, public = deep(5, lambda: both_walks(_canopy.walk_current))
        self.assertEqual(fast, public)
        self.assertEqual(sum(".deep: " in s for s in fast), 6)
        self.assertTrue(fast[-1].endswith(".both_walks: %d" % (both_walks.__code__.co_firstlineno + 5)), fast[-1])

    def test_generator_frames(self):
        fast, public = deep(2, lambda: next(gen_walk()))
        self.assertEqual(fast, public)
        self.assertTrue(any(".gen_walk: " in s for s in fast), fast)

    def test_suspended_greenlet(self):
        g = greenlet.greenlet(lambda: deep(4, greenlet.getcurrent().parent.switch))
        g.switch()
        try:
            fast, public = both_walks(_canopy.walk_greenlet, g)
            self.assertEqual(fast, public)
            self.assertEqual(sum(".deep: " in s for s in fast), 5)
            self.assertNotIn(".test_suspended_greenlet: ", "\n".join(fast))
        finally:
            g.throw(greenlet.GreenletExit)

    def test_depth_cap_keeps_leaf_frames(self):
        canopy_agent.stop()
        start(max_stack_depth=4)
        fast, public = deep(10, lambda: both_walks(_canopy.walk_current))
        self.assertEqual(fast, public)
        self.assertEqual(len(fast), 4)
        self.assertIn(".both_walks: ", fast[-1])


class InterpreterPolicy(Case):
    def test_tested_interpreter_uses_the_fast_walker(self):
        if platform.python_implementation() != "CPython" or sys.version_info[:2] not in _support.TESTED:
            self.skipTest("not a tested interpreter")
        start()
        self.assertEqual(_canopy.frame_walk(), "fast" if _canopy.FAST_FRAMES else "public")
        versions = canopy_agent.stats()["versions"]
        self.assertIn("CPython %s" % platform.python_version(), versions)
        self.assertIn("greenlet %s" % greenlet.__version__, versions)

    def test_untested_version_refused_in_one_line(self):
        os.environ["CANOPY_TEST_PYTHON_VERSION"] = "3.99.1"
        with self.assertRaises(_support.Unsupported) as cm:
            start()
        message = str(cm.exception)
        self.assertIn("CPython 3.99.1 is not a tested interpreter", message)
        self.assertIn("CANOPY_ALLOW_UNTESTED_PYTHON=1", message)
        self.assertNotIn("\n", message)
        self.assertFalse(canopy_agent.running())

    def test_untested_version_allowed_with_the_public_walker(self):
        os.environ["CANOPY_TEST_PYTHON_VERSION"] = "3.12.9"
        os.environ["CANOPY_ALLOW_UNTESTED_PYTHON"] = "1"
        start()
        self.assertEqual(_canopy.frame_walk(), "public")
        self.assertTrue(canopy_agent.stats()["versions"].endswith("frame walk public"))
        self.assertIn(".test_untested_version_allowed_with_the_public_walker: ", _canopy.walk_current()[-1])

    def test_frame_walk_setting(self):
        os.environ["CANOPY_FRAME_WALK"] = "public"
        start()
        self.assertEqual(_canopy.frame_walk(), "public")
        canopy_agent.stop()
        os.environ["CANOPY_FRAME_WALK"] = "quick"
        with self.assertRaises(_support.Unsupported):
            start()

    def test_greenlet_mode_needs_gevent(self):
        with mock.patch.dict(sys.modules, {"gevent": None}):
            with self.assertRaises(_support.Unsupported) as cm:
                start(mode="greenlet")
        self.assertIn("mode greenlet needs gevent", str(cm.exception))
        self.assertFalse(canopy_agent.running())
        self.assertIsNone(greenlet.gettrace())


if __name__ == "__main__":
    unittest.main()
