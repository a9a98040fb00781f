"""Profile tasks as the agent sees them, and which requests they may profile.

The client library polls the collector for SkyWalking ProfileTaskQuery
commands on its native thread; this table reads them when their version
changes (one C call per request otherwise) and applies SkyWalking's rules:

- a task profiles requests whose endpoint (PATH_INFO) equals EndpointName,
  from StartTime for Duration minutes;
- at most MaxSamplingCount segments per instance and task; a segment that
  ended without a single snapshot (e.g. it finished before
  MinDurationThreshold) gives its place back;
- at most max_parallel segments of a task at the same time.

Finish reports are sent by the native thread when a task's window ends
(see sampler.c), so they go out even when no request arrives.

A continuous task (canopy's own; SkyWalking agents never get one) never
ends and is never reported finished. Its MaxSamplingCount applies to each
window (Window ms, windows aligned on the epoch so every worker and the
collector's push intervals share them) instead of to the whole task, and the
requests it profiles are picked at random across the window: see admit().
"""

import sys
from random import random as _random
from time import time as _time

from . import _canopy


def _real_lock():
    """An OS lock even when gevent has patched threading: the critical
    sections below never yield, so a gevent lock (a few us per acquire on
    the request path) buys nothing; in thread mode an OS lock is what is needed."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original("_thread", "allocate_lock")()
        except Exception:
            pass
    import _thread

    return _thread.allocate_lock()


class Task:
    __slots__ = ("id", "endpoint", "start_ms", "end_ms", "min_duration_ms", "dump_period_ms",
                 "max_sampling_count", "create_time_ms", "local", "started", "running", "profiled",
                 "refused", "continuous", "window_ms", "window", "seen", "slots")

    def __init__(self, cmd):
        self.id = cmd["task_id"]
        self.endpoint = cmd["endpoint"]
        self.start_ms = int(cmd["start_time_ms"])
        self.continuous = bool(cmd.get("continuous"))
        self.window_ms = int(cmd.get("window_ms") or 0)
        if self.continuous and self.window_ms <= 0:
            raise ValueError("a continuous task needs a window")
        if self.continuous:
            self.end_ms = 1 << 62  # never; an int so that snapshots stay plain JSON
        else:
            self.end_ms = self.start_ms + int(cmd["duration_min"]) * 60000
        self.min_duration_ms = max(0, int(cmd["min_duration_ms"]))
        # SkyWalking requires >= 10 ms; a smaller value would only burn CPU.
        self.dump_period_ms = max(1, int(cmd["dump_period_ms"] or 10))
        self.max_sampling_count = max(0, int(cmd["max_sampling_count"]))
        self.create_time_ms = int(cmd["create_time_ms"])
        self.local = bool(cmd.get("local"))
        self.started = 0   # admitted segments that count against max_sampling_count
        self.running = 0   # admitted and not yet ended
        self.profiled = 0  # ended with at least one snapshot
        self.refused = 0   # matching requests not profiled (limits)
        # Continuous tasks: the window (epoch ms // window_ms) that started counts in, the
        # matching requests seen in it, and its places' random instants (epoch ms).
        self.window = None
        self.seen = 0
        self.slots = []

    def key(self):
        return (self.id, self.create_time_ms)

    def active(self, now_ms):
        return self.start_ms <= now_ms < self.end_ms

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class TaskTable:
    def __init__(self, max_parallel=5, local_tasks=()):
        self.max_parallel = max(1, int(max_parallel))
        self._lock = _real_lock()
        self._version = None
        self._local = [dict(t) for t in local_tasks]
        self._tasks = {}        # (id, create_time) -> Task
        self._by_endpoint = {}  # endpoint -> [Task], oldest first
        self._rebuild([])

    # -- commands -> tasks ---------------------------------------------------

    def add_local(self, cmd):
        with self._lock:
            self._local.append(dict(cmd))
            self._version = None

    def refresh(self):
        version = _canopy.commands_version()
        if version == self._version:
            return
        version, commands = _canopy.commands()
        with self._lock:
            self._version = version
            self._rebuild(commands)

    def _rebuild(self, commands):
        tasks = {}
        for cmd in list(self._local) + list(commands):
            try:
                task = Task(cmd)
            except (KeyError, TypeError, ValueError):
                continue
            old = self._tasks.get(task.key())
            tasks[task.key()] = old if old is not None else task
        by_endpoint = {}
        for task in sorted(tasks.values(), key=lambda t: t.create_time_ms):
            by_endpoint.setdefault(task.endpoint, []).append(task)
        self._tasks = tasks
        self._by_endpoint = by_endpoint

    # -- per request ---------------------------------------------------------

    def match(self, endpoint):
        """The task that may profile this endpoint now, or None. Cheap when nothing matches."""
        if self._version != _canopy.commands_version():
            self.refresh()
        candidates = self._by_endpoint.get(endpoint)
        if not candidates:
            return None
        now_ms = _time() * 1000.0
        for task in candidates:
            if task.start_ms <= now_ms < task.end_ms:
                return task
        return None

    def admit(self, task):
        with self._lock:
            if task.continuous and not self._admit_in_window(task):
                task.refused += 1
                return False
            if task.started >= task.max_sampling_count or task.running >= self.max_parallel:
                task.refused += 1
                return False
            task.started += 1
            task.running += 1
            return True

    @staticmethod
    def _admit_in_window(task):
        """Whether this request of a continuous task takes one of its window's places (under the lock).

        The choice has to be made when a request starts (a request cannot be
        profiled from its middle), so reservoir sampling, which replaces
        earlier picks, does not apply. Instead the window is cut into k equal
        parts (k: max_sampling_count) and a random instant is drawn in each;
        the first request at or after an instant takes its place. Under a
        steady load that is exactly k requests per window, spread at random
        over all of it, with no rate estimate to get wrong (a probability
        k/n per request would leave a window empty one time in e^k). A place
        whose instant passed during a lull goes to the next request.
        """
        now = _time() * 1000.0
        window = int(now) // task.window_ms
        if window != task.window:
            start, part = window * task.window_ms, task.window_ms / task.max_sampling_count
            task.window = window
            task.slots = [start + (i + _random()) * part for i in range(task.max_sampling_count)]
            task.seen = 0
            task.started = 0
        task.seen += 1
        return task.started < len(task.slots) and now >= task.slots[task.started]

    def release(self, task, snapshots):
        with self._lock:
            task.running -= 1
            if snapshots > 0:
                task.profiled += 1
            elif not task.continuous:
                # Never profiled (too short, or no snapshot could be taken):
                # the place goes back to the next request. A continuous task
                # keeps it spent: the window may have turned since (the place
                # would then be the new window's), and a new window comes soon.
                task.started -= 1

    def snapshot(self):
        with self._lock:
            return [t.as_dict() for t in self._tasks.values()]
