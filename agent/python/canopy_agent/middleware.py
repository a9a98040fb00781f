"""WSGI middleware: profiles the requests a task asks for, one segment per request.

A request is profiled when a task's endpoint equals its PATH_INFO and the
task's limits allow it (see _tasks.py). Profiling starts when the request
enters the middleware and stops when the response is closed, so a streamed
(iterable) response is profiled while it is being produced. Snapshots are
taken by the C extension; this file only decides and keeps count.

Everything here is wrapped so that an agent failure can never fail the
request: the app is called exactly as it would be without canopy.
"""

import os

from . import _agent, _canopy

try:  # SkyWalking's Python agent, when the app runs it too (not a dependency)
    from skywalking.trace.context import get_context as _sw_get_context
except Exception:  # ImportError, or any error while importing it
    _sw_get_context = None


def segment_id():
    """The trace segment id for the current request.

    When a SkyWalking tracing context with an active span exists (the
    SkyWalking agent instruments the app and this middleware runs inside its
    entry span), its segment id is used, so the OAP can show our snapshots
    with its segment. Otherwise a new unique id is made.
    """
    if _sw_get_context is not None:
        try:
            ctx = _sw_get_context()
            if getattr(ctx, "active_span", None) is not None:
                sid = str(ctx.segment.segment_id)
                if sid:
                    return sid
        except Exception:
            pass
    # A random 128-bit prefix per process plus a counter: unique across
    # processes and restarts, and far cheaper than a uuid (or a getrandom
    # system call) per request.
    global _seg_counter
    _seg_counter += 1
    return "%s%08x" % (_seg_prefix, _seg_counter)


def _new_prefix():
    global _seg_prefix, _seg_counter
    _seg_prefix = os.urandom(12).hex()
    _seg_counter = 0


_seg_prefix = ""
_seg_counter = 0
_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a child must not repeat the parent's ids


class _Profiled:
    """Wraps the app's response iterable; ends the segment on close()."""

    __slots__ = ("_result", "_task", "_key", "_done")

    def __init__(self, result, task, key):
        self._result = result
        self._task = task
        self._key = key
        self._done = False

    def __iter__(self):
        return iter(self._result)

    def close(self):
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def _finish(self):
        if self._done:
            return
        self._done = True
        _end(self._task, self._key)

    def __del__(self):
        # A server that never calls close() (against PEP 3333) must not leak
        # the registry entry.
        try:
            self._finish()
        except Exception:
            pass


def _end(task, key):
    st = _agent.state()
    try:
        n = _canopy.end(target=key)
    except Exception:
        n = -1
        if st is not None:
            st.middleware_errors += 1
    if st is not None:
        st.tasks.release(task, n)
        if n > 0:
            st.requests_profiled += 1


class CanopyMiddleware:
    """WSGI middleware. Usually made by wsgi_middleware(app)."""

    def __init__(self, app):
        self.app = app
        self.__wrapped__ = app

    def __call__(self, environ, start_response):
        st = _agent.state()
        if st is None:
            return self.app(environ, start_response)
        task = key = None
        try:
            st.requests += 1
            task = st.tasks.match(environ.get("PATH_INFO", ""))
            if task is not None:
                if st.tasks.admit(task):
                    # Profiles the current greenlet (or thread); the key is
                    # what end() needs, wherever close() is called from.
                    key = _canopy.begin(task.id, segment_id(), task.min_duration_ms, task.dump_period_ms)
                    if key is None:
                        st.tasks.release(task, -1)
                        task = None
                else:
                    task = None
        except Exception:
            st.middleware_errors += 1
            if task is not None and key is None:
                st.tasks.release(task, -1)
            task = key = None
        if task is None:
            return self.app(environ, start_response)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            _end(task, key)
            raise
        if type(result) in (list, tuple):
            # The body is already made: what is left (writing it out) is the
            # server's work, not the app's. Ending here also spares a wrapper.
            _end(task, key)
            return result
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # Keep the server's sendfile path: sending a file is not app code.
            _end(task, key)
            return result
        return _Profiled(result, task, key)


def wsgi_middleware(app):
    """Wraps a WSGI app so that requests matching a profiling task are profiled.
    Wrapping twice is harmless (the inner wrapper sees the request already profiled)."""
    if isinstance(app, CanopyMiddleware):
        return app
    return CanopyMiddleware(app)
