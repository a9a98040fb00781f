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

from . import _canopy
from ._config import DEFAULT_COLLECTOR
from ._agent import add_task, resolve_mode, running, start, stats, stop
from .middleware import CanopyMiddleware, segment_id, wsgi_middleware
from .profile import profile

__version__ = _canopy.VERSION

__all__ = [
    "start",
    "stop",
    "stats",
    "running",
    "add_task",
    "profile",
    "wsgi_middleware",
    "CanopyMiddleware",
    "segment_id",
    "resolve_mode",
    "DEFAULT_COLLECTOR",
]
