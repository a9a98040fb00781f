"""The agent's lifecycle: start(), stop(), stats(), fork handling, modes."""

import atexit
import logging
import os
import sys
import threading

from . import _canopy, _support
from ._config import Config, parse_local_tasks, local_task
from ._tasks import TaskTable

_lock = threading.Lock()  # start/stop only; never taken on the request path
_state = None             # _Running while started
_fork_hook_installed = False


class _Running:
    def __init__(self, config, mode, tasks, versions):
        self.config = config
        self.mode = mode
        self.versions = versions   # what the agent found at start, for the log and stats()
        self.tasks = tasks
        self.pid = os.getpid()
        self.requests = 0          # requests seen by the middleware
        self.requests_profiled = 0
        self.middleware_errors = 0


def gevent_patched_threading():
    """True when gevent has monkey-patched threading (greenlets are the unit of concurrency)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:
        return False


def resolve_mode(mode):
    """auto -> greenlet when gevent patched threading, else thread."""
    if mode == "auto":
        return "greenlet" if gevent_patched_threading() else "thread"
    return mode


def start(**settings):
    """Starts the agent in this process. Settings override the CANOPY_* environment.

    Call it in the process that serves requests (for pre-fork servers: in
    each worker, after fork; never in a master that forks afterwards). Safe to
    call twice; the second call returns the running agent's mode.

    Returns the mode in effect: "greenlet", "sampling" or "thread".
    """
    global _state, _fork_hook_installed
    with _lock:
        if _state is not None:
            return _state.mode
        config = Config(**settings)
        mode = resolve_mode(config.mode)
        # Refuse before anything starts: an untested interpreter's frames
        # could be read wrongly, and greenlet modes without gevent see nothing.
        walk = _support.check_interpreter(_canopy)
        _support.check_mode(mode)
        _canopy.frame_walk(walk)
        local = parse_local_tasks(config.local_tasks)
        _canopy.configure(
            config.service,
            url=config.collector,
            instance=config.instance,
            max_stack_depth=config.max_stack_depth,
            max_segments=config.max_segments,
            signature_cache=config.signature_cache,
            max_snapshots_per_segment=config.max_snapshots_per_segment,
            max_segment_ms=config.max_segment_ms,
            max_batch_snapshots=config.max_batch_snapshots,
            max_batch_age_ms=config.max_batch_age_ms,
            max_buffered_bytes=config.max_buffered_bytes,
            command_poll_ms=config.command_poll_ms,
            timeout_ms=config.timeout_ms,
            shutdown_timeout_ms=config.shutdown_timeout_ms,
            tls_ca_file=config.tls_ca_file,
            tls_cert_file=config.tls_cert_file,
            tls_key_file=config.tls_key_file,
            tls_server_name=config.tls_server_name,
        )
        try:
            _canopy.set_mode(mode)
            _canopy.follow_children(bool(config.follow_children), config.max_children_per_segment,
                                    _hub_types())
            if mode in ("greenlet", "sampling"):
                _canopy.install_tracer()
            elif mode == "thread" and config.follow_children:
                _follow_threads()
        except Exception:
            _canopy.shutdown()
            raise
        versions = "%s, frame walk %s" % (_support.versions_line(_canopy.VERSION), walk)
        _state = _Running(config, mode, TaskTable(config.max_parallel, local), versions)
        logging.getLogger("canopy_agent").info("canopy agent started (mode %s): %s", mode, versions)
        if not _fork_hook_installed:
            os.register_at_fork(after_in_child=_after_fork_child)
            atexit.register(stop)
            _fork_hook_installed = True
        # Ask for tasks right away rather than at the end of the first poll interval.
        _canopy.poll_now()
        return mode


def _hub_types():
    """Greenlet types that are never a request's child: gevent's hub runs
    everybody's callbacks, so its loop is nobody's work. Not imported here
    (the app may not have monkey-patched yet): the extension looks gevent.hub
    up itself when it was not loaded at start."""
    import sys

    hub = sys.modules.get("gevent.hub")
    return (hub.Hub,) if hub is not None else ()


def _follow_threads():
    """Thread mode: a threading.Thread started while a profiled thread runs is
    profiled under its segment, rooted at the start() call (issue 12).

    threading has no hook for a thread's start, so Thread.start is wrapped,
    once per process. The wrapper costs a C call when the starting thread is
    not profiled (or the agent is stopped); when it is, it takes the spawn
    stack and wraps that thread's run() to register and unregister it."""
    import threading

    original = threading.Thread.start
    if getattr(original, "_canopy_follow", False):
        return

    def start(self):
        token = _canopy.thread_spawn(1)  # 1: leave this wrapper out of the spawn stack
        if token is not None:
            run = self.run

            def run_followed():
                followed = _canopy.thread_child_begin(token)
                try:
                    run()
                finally:
                    if followed:
                        _canopy.thread_child_end()

            self.run = run_followed
        return original(self)

    start._canopy_follow = True
    start.__wrapped__ = original
    start.__doc__ = original.__doc__
    threading.Thread.start = start


def ensure_tracer():
    """Installs the switch callback on this thread if the mode needs one and it
    is not ours already (e.g. something replaced it since start())."""
    st = _state
    if st is not None and st.mode in ("greenlet", "sampling"):
        _canopy.install_tracer()


def stop():
    """Stops profiling, removes the switch callback, flushes what is buffered
    (waiting up to shutdown_timeout_ms for acks) and frees the agent."""
    global _state
    with _lock:
        if _state is None:
            return
        _state = None
        _canopy.shutdown()


def running():
    return _state is not None


def state():
    return _state


def add_task(task_id, endpoint, duration_min=10, min_duration_ms=0, dump_period_ms=10, max_sampling_count=5,
             start_time_ms=None, continuous=False, window_ms=10000):
    """Adds a profiling task defined in this process (no collector command needed).
    continuous=True: it never ends, and max_sampling_count applies to each window_ms."""
    st = _state
    if st is None:
        raise RuntimeError("canopy_agent: start() first")
    st.tasks.add_local(local_task(task_id, endpoint, duration_min, min_duration_ms, dump_period_ms,
                                  max_sampling_count, start_time_ms, continuous, window_ms))


def stats():
    """Counters of the agent (extension, client library, middleware). Drops are
    in snapshots_dropped / lib_snapshots_dropped / batches_dropped."""
    out = _canopy.stats()
    st = _state
    out["running"] = st is not None
    if st is not None:
        out["mode"] = st.mode
        out["pid"] = st.pid
        out["versions"] = st.versions
        out["requests"] = st.requests
        out["requests_profiled"] = st.requests_profiled
        out["middleware_errors"] = st.middleware_errors
        out["tasks"] = st.tasks.snapshot()
    return out


def _after_fork_child():
    # The native sampler did not survive the fork; the client library starts
    # afresh by itself on first use (new session and default instance name).
    st = _state
    if st is None:
        return
    try:
        _canopy.after_fork_child()
    except Exception:
        pass
    st.pid = os.getpid()
    st.requests = st.requests_profiled = 0
    # Sampling budgets are per instance, and this is a new instance.
    st.tasks = TaskTable(st.config.max_parallel, parse_local_tasks(st.config.local_tasks))
