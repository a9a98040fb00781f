"""canopy_agent: greenlet-correct profiling for gunicorn + gevent (and threaded) WSGI apps.

Snapshots of profiled requests go, in batches, to the canopy collector on the
host, which merges them by profiling task and exports them (SkyWalking OAP,
files, ...).

gunicorn (the usual way)::

    gunicorn -k gevent -w 4 -c python:canopy_agent.gunicorn_conf app:app

Any other server::

    import canopy_agent
    canopy_agent.start(service="shop")          # in the process that serves requests
    app = canopy_agent.wsgi_middleware(app)

Settings come from keyword arguments to start() or the environment:
CANOPY_COLLECTOR (nng URL), CANOPY_SERVICE, CANOPY_INSTANCE (default
"<pid>@<hostname>"), CANOPY_MODE (auto | greenlet | sampling | thread),
CANOPY_TLS_CA_FILE / _CERT_FILE / _KEY_FILE / _SERVER_NAME (for a tls+tcp://
collector); see docs/agent.md for the rest.
"""

import importlib

# The API is imported on first use, not with the package: canopy-run and the
# gunicorn config import this package in processes where the extension may not
# load (libnng missing), and must then say so in one line and let the app run.
# canopy_agent.start() (or any other name here) raises that ImportError.
_EXPORTS = {
    "start": "_agent",
    "stop": "_agent",
    "stats": "_agent",
    "running": "_agent",
    "add_task": "_agent",
    "resolve_mode": "_agent",
    "profile": "profile",
    "wsgi_middleware": "middleware",
    "CanopyMiddleware": "middleware",
    "segment_id": "middleware",
    "DEFAULT_COLLECTOR": "_config",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name == "__version__":
        value = importlib.import_module("._canopy", __name__).VERSION
    elif name in _EXPORTS:
        value = getattr(importlib.import_module("." + _EXPORTS[name], __name__), name)
    else:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__ + ["__version__"])
