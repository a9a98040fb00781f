"""Profiling code that is not a WSGI request: a context manager around one segment."""

import contextlib

from . import _canopy
from .middleware import segment_id as _new_segment_id


@contextlib.contextmanager
def profile(task_id, segment_id=None, min_duration_ms=0, dump_period_ms=10):
    """Profiles the current greenlet (or thread, in thread mode) as one segment
    of task_id while the block runs. Yields the segment id, or None when the
    agent is not running or the greenlet is already profiled.

    Unlike the middleware this applies no task limits: the caller decides.
    """
    sid = segment_id or _new_segment_id()
    key = None
    try:
        key = _canopy.begin(task_id, sid, min_duration_ms, dump_period_ms)
    except Exception:
        key = None
    try:
        yield sid if key is not None else None
    finally:
        if key is not None:
            try:
                _canopy.end(target=key)
            except Exception:
                pass
