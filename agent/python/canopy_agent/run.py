"""canopy-run: switches the canopy agent on for a gunicorn command.

    canopy-run gunicorn -k gevent -w 4 app:app
    canopy-run gunicorn -c gunicorn.conf.py app:app     # your config and hooks are kept

canopy-run runs the command with a sitecustomize on PYTHONPATH. In the
gunicorn master, once gunicorn has read its configuration (config file,
GUNICORN_CMD_ARGS, command line), it chains canopy's hooks with the app's:
the same hooks as -c python:canopy_agent.gunicorn_conf (post_fork,
post_worker_init, worker_exit). Before that it checks that the agent can
work: the extension loads (libnng), the interpreter is tested, gevent is there
for the greenlet modes, and a collector listens at CANOPY_COLLECTOR. If not,
it prints one line saying why and the app runs unprofiled.

Settings are the agent's CANOPY_* environment variables (docs/agent.md).
"""

import importlib.abc
import importlib.util
import os
import sys

PROG = "canopy-run"
_HOOKED_MODULE = "gunicorn.app.base"


def _usage(out):
    print("usage: canopy-run COMMAND [ARG...]\n\n" + __doc__.split("\n\n", 1)[1].rstrip(), file=out)


def _is_gunicorn(cmd):
    if os.path.basename(cmd[0]).startswith("gunicorn"):
        return True
    return any(a == "-m" and i + 1 < len(cmd) and cmd[i + 1] == "gunicorn" for i, a in enumerate(cmd))


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        _usage(sys.stdout if args else sys.stderr)
        return 0 if args else 2
    env = dict(os.environ)
    if _is_gunicorn(args):
        here = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(here, "bootstrap"),
                                                        env.get("PYTHONPATH")) if p)
        env["CANOPY_RUN_PACKAGE_PATH"] = os.path.dirname(here)
    else:
        print("%s: %s is not gunicorn, so it runs unprofiled (other servers: call canopy_agent.start(), "
              "docs/agent.md)" % (PROG, args[0]), file=sys.stderr)
    try:
        os.execvpe(args[0], args, env)
    except OSError as e:
        print("%s: cannot run %s: %s" % (PROG, args[0], e.strerror), file=sys.stderr)
        return 127


# ---- in the gunicorn master (through bootstrap/sitecustomize.py) ----------------


class _GunicornFinder(importlib.abc.MetaPathFinder):
    """Patches gunicorn.app.base as it is imported, so nothing of gunicorn is
    imported early and other programs are left alone."""

    def find_spec(self, name, path, target=None):
        if name != _HOOKED_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch_application(module)

        spec.loader.exec_module = exec_module
        return spec


def arm_gunicorn():
    if _HOOKED_MODULE in sys.modules:
        _patch_application(sys.modules[_HOOKED_MODULE])
    elif not any(isinstance(f, _GunicornFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _GunicornFinder())


def _patch_application(module):
    base = module.BaseApplication
    if getattr(base.do_load_config, "_canopy", False):
        return
    load = base.do_load_config

    def do_load_config(self):
        load(self)
        try:
            problem = preflight(self.cfg)
        except Exception as e:
            problem = "agent check failed: %s" % e
        if problem:
            print("%s: %s; the app runs unprofiled" % (PROG, problem), file=sys.stderr)
            return
        from . import gunicorn_conf
        gunicorn_conf.chain_hooks(self.cfg)

    do_load_config._canopy = True
    base.do_load_config = do_load_config


_LOCAL_HOSTS = ("", "127.0.0.1", "localhost", "::1", "0.0.0.0", "::")
_SO_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket
_TCP_LISTEN = "0A"       # /proc/net/tcp state of a listening socket


def _unix_listening(path):
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & _SO_ACCEPTCON:
                return True
    return False


def _tcp_listening(port):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def _collector_problem(url):
    """Why no collector can be listening at url, or None. Read from the
    kernel's socket tables, never by connecting: a connection that goes away
    without speaking nng's protocol is not something to do to a collector.
    Only local URLs can be checked; others are assumed reachable."""
    try:
        if url.startswith("ipc://"):
            listening = _unix_listening(url[len("ipc://"):])
        elif url.startswith("tcp://"):
            host, _, port = url[len("tcp://"):].rpartition(":")
            if host.strip("[]") not in _LOCAL_HOSTS:
                return None
            listening = _tcp_listening(int(port))
        else:
            return None  # tls+tcp:// and others
    except (OSError, ValueError, StopIteration):
        return None
    return None if listening else "no collector listening at %s" % url


def preflight(cfg):
    """One line saying why the agent cannot work in this gunicorn, or None."""
    try:
        from . import _canopy
    except ImportError as e:
        return "the agent's extension cannot load: %s" % e
    from . import _support
    from ._config import Config

    try:
        _support.check_interpreter(_canopy)
        config = Config()
        mode = config.mode
        if mode == "auto":
            mode = "greenlet" if "gevent" in str(cfg.worker_class_str) else "thread"
        _support.check_mode(mode)
    except (_support.Unsupported, ValueError) as e:
        return str(e)
    return _collector_problem(config.collector)


if __name__ == "__main__":
    sys.exit(main())
