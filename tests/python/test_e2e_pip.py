"""End to end: canopy_agent as users install it, and where it cannot work.

PipPackage: `pip install --no-build-isolation ./agent/python` into a fresh
virtualenv (Debian's gevent through --system-site-packages), and a wheel from
`python3 -m build --wheel --no-isolation` installed into another one. No
PYTHONPATH leads to build/python: the fleets find canopy_agent only in the
virtualenvs. The example shop is profiled into a collector by
`canopy-run gunicorn ...` (keeping the app's own config file and hooks) and by
`-c python:canopy_agent.gunicorn_conf` from the wheel.

BadEnvironment: no collector, libnng missing when the extension loads, an
untested Python (CANOPY_TEST_PYTHON_VERSION), and greenlet mode without
gevent. Each prints one line saying why, and the app serves unprofiled.

With CANOPY_FLEET_ROOT (make test-py313) the virtualenvs, builds and fleets
are made in that root file system (Debian 13) and the collector stays here.
"""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

AGENT_SRC = os.path.join(fleet.ROOT, "agent", "python")
TASK = [{"id": "task-checkout", "endpoint": "/checkout"}]
UNPROFILED = "; the app runs unprofiled"


def run(cmd, **kw):
    """Runs cmd where the fleets run (in CANOPY_FLEET_ROOT when set)."""
    cmd = (["chroot", fleet.FLEET_ROOT] if fleet.FLEET_ROOT else []) + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    if out.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), out.returncode, out.stdout[-3000:],
                                                          out.stderr[-3000:]))
    return out


def built_package():
    """The folder holding the canopy_agent built for the fleets' interpreter."""
    return os.environ.get("CANOPY_FLEET_PYTHONPATH") or os.environ["PYTHONPATH"].split(os.pathsep)[0]


def clean_env():
    """The environment without the build tree's canopy_agent."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


class ProfiledFleetCase(fleet.FleetTestCase):
    def assert_profiles_shop(self, collector, shop):
        fleet.wait_until(lambda: all(s.get("tasks") for s in shop.worker_stats().values()), 30,
                         what="the task in the workers")
        result = fleet.load(shop.base + "/checkout", requests=80, concurrency=40)
        self.assertEqual(result["failed"], 0, result["stderr"])
        shop.stop()
        rows = fleet.wait_until(lambda: collector.rows("task-checkout"), 10, what="snapshots in the JSONL")
        instances = {r["serviceInstance"] for r in rows}
        self.assertGreaterEqual(len(instances), 2, "snapshots from %s" % sorted(instances))
        fleet.check_segments(self, rows)
        handler = os.path.join(fleet.EXAMPLE, "app.py") + ".checkout: "
        self.assertTrue(all(any(s.startswith(handler) for s in r["stack"]["codeSignatures"]) for r in rows))


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class PipPackage(ProfiledFleetCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = fleet.Workdir("canopy-pip-")
        env = clean_env()
        cls.venv = cls.tmp.join("venv")
        run([fleet.PYTHON, "-m", "venv", "--system-site-packages", cls.venv], env=env)
        run([os.path.join(cls.venv, "bin", "pip"), "install", "--no-index", "--no-build-isolation", AGENT_SRC],
            env=env)
        dist = cls.tmp.join("dist")
        run([fleet.PYTHON, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, AGENT_SRC], env=env)
        wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
        assert len(wheels) == 1, wheels
        # The second virtualenv gets the wheel from the first one's pip (--python): same result, seconds less.
        cls.wheel_venv = cls.tmp.join("venv-wheel")
        run([fleet.PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", cls.wheel_venv], env=env)
        run([os.path.join(cls.venv, "bin", "pip"), "--python", os.path.join(cls.wheel_venv, "bin", "python"),
             "install", "--no-index", os.path.join(dist, wheels[0])], env=env)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_installed_package(self):
        out = run([os.path.join(self.venv, "bin", "python"), "-c",
                   "import canopy_agent, canopy_agent._canopy as c; print(canopy_agent.__version__, c.__file__)"],
                  env=clean_env(), cwd="/")
        version, path = out.stdout.split()
        self.assertEqual(version, "0.1.0")
        self.assertTrue(path.startswith(self.venv + "/lib/"), path)
        canopy_run = os.path.join(self.venv, "bin", "canopy-run")
        help_text = run([canopy_run, "--help"]).stdout
        self.assertIn("canopy-run gunicorn -k gevent -w 4 app:app", help_text)
        # Not gunicorn: it runs, unprofiled, with one line saying so.
        other = run([canopy_run, "/bin/echo", "served"])
        self.assertEqual(other.stdout, "served\n")
        self.assertRegex(other.stderr, r"^canopy-run: /bin/echo is not gunicorn, so it runs unprofiled .*\n$")
        missing = subprocess.run((["chroot", fleet.FLEET_ROOT] if fleet.FLEET_ROOT else []) + [
            canopy_run, "gunicorn-that-is-not-there"], capture_output=True, text=True, timeout=60)
        self.assertEqual(missing.returncode, 127, missing.stderr)
        self.assertIn("canopy-run: cannot run gunicorn-that-is-not-there", missing.stderr)

    def test_canopy_run_keeps_the_apps_config(self):
        collector = self.collector = fleet.Collector(self.work, TASK).start()
        # The app's own config file: a hook canopy must chain, a setting it must keep.
        marks = self.work.join("marks")
        os.makedirs(marks)
        conf = self.work.join("app_conf.py")
        with open(conf, "w") as f:
            f.write("import os\n"
                    "timeout = 77\n"
                    "def on_starting(server):\n"
                    "    open(os.path.join(%r, 'timeout-%%d' %% server.cfg.timeout), 'w').close()\n"
                    "def post_fork(server, worker):\n"
                    "    open(os.path.join(%r, 'post_fork-%%d' %% os.getpid()), 'w').close()\n" % (marks, marks))
        env = {"CANOPY_COLLECTOR": collector.url, "PYTHONPATH": fleet.EXAMPLE,
               "PATH": os.path.join(self.venv, "bin") + os.pathsep + os.environ["PATH"]}
        shop = self.fleet(env=env, launcher=[os.path.join(self.venv, "bin", "canopy-run"), "gunicorn"],
                          conf=False, args=["-c", conf])
        self.assertNotIn("canopy-run:", shop.read_log())
        self.assert_profiles_shop(collector, shop)
        made = sorted(os.listdir(marks))
        self.assertIn("timeout-77", made)
        self.assertEqual(len([m for m in made if m.startswith("post_fork-")]), shop.workers, made)

    def test_gunicorn_conf_from_the_wheel(self):
        collector = self.collector = fleet.Collector(self.work, TASK).start()
        env = {"CANOPY_COLLECTOR": collector.url, "PYTHONPATH": fleet.EXAMPLE}
        shop = self.fleet(env=env, launcher=[os.path.join(self.wheel_venv, "bin", "python"), "-m", "gunicorn"])
        self.assert_profiles_shop(collector, shop)


@unittest.skipUnless(fleet.canopy_bin(), "collector binary not built")
class BadEnvironment(fleet.FleetTestCase):
    """canopy_agent from the build tree (PYTHONPATH), run through canopy-run."""

    def canopy_run(self, python=fleet.PYTHON):
        return [python, "-m", "canopy_agent.run"]

    def assert_unprofiled(self, shop, reason):
        log = shop.read_log()
        lines = [line for line in log.splitlines() if line.startswith("canopy-run:")]
        self.assertEqual(len(lines), 1, log)
        self.assertIn(reason, lines[0])
        self.assertTrue(lines[0].endswith(UNPROFILED), lines[0])
        result = fleet.load(shop.base + "/checkout", requests=20, concurrency=10)
        self.assertEqual(result["failed"], 0, result["stderr"])
        self.assertNotIn("canopy agent started", shop.read_log())

    def test_no_collector(self):
        url = "ipc://" + self.work.join("absent.sock")
        shop = self.fleet(wait_agent=False, workers=2, conf=False, env={"CANOPY_COLLECTOR": url},
                          launcher=self.canopy_run() + ["gunicorn"])
        self.assert_unprofiled(shop, "no collector listening at " + url)

    def test_untested_python(self):
        env = {"CANOPY_TEST_PYTHON_VERSION": "3.99.0"}
        shop = self.fleet(wait_agent=False, workers=2, conf=False, env=env, launcher=self.canopy_run() + ["gunicorn"])
        self.assert_unprofiled(shop, "CPython 3.99.0 is not a tested interpreter")
        # The gunicorn config alone: each worker says why, and serves.
        conf = self.fleet(wait_agent=False, workers=2, env=env, name="conf")
        fleet.wait_until(lambda: conf.read_log().count("canopy agent failed to start: CPython 3.99.0") == 2, 10,
                         what="the refusal in both workers")
        self.assertEqual(fleet.load(conf.base + "/checkout", requests=10, concurrency=5)["failed"], 0)

    def test_libnng_missing(self):
        # A copy of the package whose extension needs a libnng that is not
        # there: the dynamic loader refuses it as it would without libnng1.
        pkg = self.work.join("pkg")
        shutil.copytree(os.path.join(built_package(), "canopy_agent"), os.path.join(pkg, "canopy_agent"))
        ext = [f for f in os.listdir(os.path.join(pkg, "canopy_agent")) if f.startswith("_canopy")][0]
        path = os.path.join(pkg, "canopy_agent", ext)
        with open(path, "rb") as f:
            blob = f.read()
        self.assertIn(b"libnng.so.1\0", blob)
        with open(path, "wb") as f:
            f.write(blob.replace(b"libnng.so.1\0", b"libnxx.so.1\0"))
        shop = self.fleet(wait_agent=False, workers=2, conf=False,
                          env={"PYTHONPATH": os.pathsep.join((pkg, fleet.EXAMPLE))},
                          launcher=self.canopy_run() + ["gunicorn"])
        self.assert_unprofiled(shop, "libnxx.so.1: cannot open shared object file")

    def test_greenlet_mode_without_gevent(self):
        # A virtualenv that sees gunicorn (and its pkg_resources) but not gevent.
        venv = self.work.join("venv")
        run([fleet.PYTHON, "-m", "venv", "--without-pip", venv], env=clean_env())
        only = self.work.join("only")
        os.makedirs(only)
        for name in ("gunicorn", "pkg_resources", "packaging"):
            target = os.path.join("/usr/lib/python3/dist-packages", name)
            if os.path.exists((fleet.FLEET_ROOT or "") + target):
                os.symlink(target, os.path.join(only, name))
        python = os.path.join(venv, "bin", "python")
        env = {"CANOPY_MODE": "greenlet", "PYTHONPATH": os.pathsep.join((only, built_package(), fleet.EXAMPLE))}
        shop = self.fleet(wait_agent=False, workers=2, conf=False, env=env, worker_class="sync",
                          launcher=self.canopy_run(python) + [python, "-m", "gunicorn"])
        self.assert_unprofiled(shop, "mode greenlet needs gevent, which is not installed")


if __name__ == "__main__":
    unittest.main()
