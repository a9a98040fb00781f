"""gunicorn configuration that turns the canopy agent on in every worker.

    gunicorn -k gevent -w 4 -c python:canopy_agent.gunicorn_conf app:app

- post_fork: starts the agent in the worker. Never in the master: nng (the
  transport) panics in a child forked after its parent started it, so the
  agent exists only in workers, and a recycled worker starts a fresh one.
- post_worker_init: wraps the worker's WSGI app with the middleware, and
  (re)installs the greenlet switch callback now that gevent has patched
  the worker (gunicorn's gevent worker patches after post_fork).
- worker_exit: flushes what is buffered before the worker goes away (e.g.
  when max_requests recycles it).

Your own gunicorn settings and hooks can still be used: put them in a file or
module named by CANOPY_GUNICORN_CONFIG (a path, or python:module.name). Its
settings are loaded here, and its hooks run after canopy's.

The mode is CANOPY_MODE; "auto" means greenlet mode for gevent workers (and
any worker where gevent patched threading), thread mode otherwise.
"""

import importlib
import os
import runpy


def _load_user_config():
    spec = os.environ.get("CANOPY_GUNICORN_CONFIG")
    if not spec:
        return {}
    if spec.startswith("python:"):
        module = importlib.import_module(spec[len("python:"):])
        return {k: v for k, v in vars(module).items() if not k.startswith("_")}
    return {k: v for k, v in runpy.run_path(spec).items() if not k.startswith("_")}


_user = _load_user_config()
_HOOKS = ("post_fork", "post_worker_init", "worker_exit")
globals().update({k: v for k, v in _user.items() if k not in _HOOKS})


def _is_gevent_worker(worker):
    for cls in type(worker).__mro__:
        if cls.__module__.startswith("gunicorn.workers.ggevent"):
            return True
    return False


def _log(worker, level, msg, *args):
    log = getattr(worker, "log", None)
    if log is not None:
        getattr(log, level)(msg, *args)


def _start_agent(worker):
    try:
        import canopy_agent
        from canopy_agent import _agent
        from canopy_agent._config import Config

        mode = Config().mode
        if mode == "auto":
            # The gevent worker patches only after post_fork, so decide from
            # the worker class rather than from the (not yet) patched modules.
            mode = "greenlet" if _is_gevent_worker(worker) or _agent.gevent_patched_threading() else "thread"
        mode = canopy_agent.start(mode=mode)
        _log(worker, "info", "canopy agent started in worker %s (mode %s): %s", os.getpid(), mode,
             canopy_agent.stats().get("versions"))
    except Exception as e:  # the agent never stops the app from serving
        _log(worker, "error", "canopy agent failed to start: %s", e)


def _wrap_app(worker):
    try:
        import canopy_agent
        from canopy_agent import _agent

        if canopy_agent.running():
            _agent.ensure_tracer()
            worker.wsgi = canopy_agent.wsgi_middleware(worker.wsgi)
    except Exception as e:
        _log(worker, "error", "canopy agent: cannot wrap the app: %s", e)


def _stop_agent(worker):
    try:
        import canopy_agent

        canopy_agent.stop()
    except Exception as e:
        _log(worker, "warning", "canopy agent: stop failed: %s", e)


def post_fork(server, worker):
    _start_agent(worker)
    user = _user.get("post_fork")
    if user is not None:
        user(server, worker)


def post_worker_init(worker):
    _wrap_app(worker)
    user = _user.get("post_worker_init")
    if user is not None:
        user(worker)


def worker_exit(server, worker):
    user = _user.get("worker_exit")
    if user is not None:
        user(server, worker)
    _stop_agent(worker)


def chain_hooks(cfg):
    """For canopy-run: puts canopy's hooks into a loaded gunicorn Config,
    around the app's own (canopy's first at start, last at exit, as above).
    A config that is this module already has them."""
    def chained(name, user):
        if getattr(user, "__module__", None) == __name__:
            return user
        if name == "post_fork":
            def hook(server, worker):
                _start_agent(worker)
                user(server, worker)
        elif name == "post_worker_init":
            def hook(worker):
                _wrap_app(worker)
                user(worker)
        else:
            def hook(server, worker):
                user(server, worker)
                _stop_agent(worker)
        return hook

    for name in _HOOKS:
        cfg.set(name, chained(name, cfg.settings[name].get()))
