"""Agent settings: keyword arguments to start(), else CANOPY_* environment variables, else defaults."""

import os

MODES = ("auto", "greenlet", "sampling", "thread")

# The collector's default nng receiver URL (plugins/receivers/nng, config/canopy.yaml).
DEFAULT_COLLECTOR = "ipc:///tmp/canopy.sock"

# name: (environment variable, type, default)
_SETTINGS = {
    "collector": ("CANOPY_COLLECTOR", str, DEFAULT_COLLECTOR),
    "service": ("CANOPY_SERVICE", str, None),
    "instance": ("CANOPY_INSTANCE", str, None),  # None: "<pid>@<hostname>", per process
    "mode": ("CANOPY_MODE", str, "auto"),
    "max_stack_depth": ("CANOPY_MAX_STACK_DEPTH", int, 500),
    # Segments profiled at the same time per task and instance (SkyWalking's
    # agent_profile_max_parallel); bounds the cost when a task matches a hot endpoint.
    "max_parallel": ("CANOPY_MAX_PARALLEL", int, 5),
    # Bound on profiled greenlets/threads registered at once (all tasks).
    "max_segments": ("CANOPY_MAX_SEGMENTS", int, 1024),
    "max_snapshots_per_segment": ("CANOPY_MAX_SNAPSHOTS_PER_SEGMENT", int, 10000),
    # A segment stops taking snapshots after this long (SkyWalking's profile max_duration).
    "max_segment_ms": ("CANOPY_MAX_SEGMENT_MS", int, 10 * 60 * 1000),
    "signature_cache": ("CANOPY_SIGNATURE_CACHE", int, 16384),
    "command_poll_ms": ("CANOPY_COMMAND_POLL_MS", int, 5000),
    "max_batch_snapshots": ("CANOPY_MAX_BATCH_SNAPSHOTS", int, 256),
    "max_batch_age_ms": ("CANOPY_MAX_BATCH_AGE_MS", int, 200),
    "max_buffered_bytes": ("CANOPY_MAX_BUFFERED_BYTES", int, 8 << 20),
    "timeout_ms": ("CANOPY_TIMEOUT_MS", int, 5000),
    "shutdown_timeout_ms": ("CANOPY_SHUTDOWN_TIMEOUT_MS", int, 2000),
    # Tasks defined in the process itself (no collector needed to decide what to
    # profile), as "id=...,endpoint=...,duration=10,min_duration_ms=0,dump_period_ms=10,
    # max_sampling_count=5;..." -- for tests, benchmarks and local debugging.
    "local_tasks": ("CANOPY_LOCAL_TASKS", str, None),
}


class Config:
    """Resolved settings (attributes named like the keys of _SETTINGS)."""

    def __init__(self, **overrides):
        unknown = set(overrides) - set(_SETTINGS)
        if unknown:
            raise TypeError("canopy_agent: unknown setting(s): %s" % ", ".join(sorted(unknown)))
        for name, (env, typ, default) in _SETTINGS.items():
            value = overrides.get(name)
            if value is None:
                raw = os.environ.get(env)
                if raw is not None and raw != "":
                    try:
                        value = typ(raw)
                    except ValueError:
                        raise ValueError("canopy_agent: %s=%r is not a valid %s" % (env, raw, typ.__name__))
            if value is None:
                value = default
            setattr(self, name, value)
        if self.mode not in MODES:
            raise ValueError("canopy_agent: mode must be one of %s, not %r" % ("|".join(MODES), self.mode))
        if not self.service:
            self.service = _default_service()

    def as_dict(self):
        return {name: getattr(self, name) for name in _SETTINGS}


def _default_service():
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0 or "python"


def parse_local_tasks(spec):
    """Parses CANOPY_LOCAL_TASKS into command dicts shaped like _canopy.commands()."""
    tasks = []
    if not spec:
        return tasks
    for chunk in spec.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        fields = {}
        for kv in chunk.split(","):
            key, sep, value = kv.partition("=")
            if not sep:
                raise ValueError("canopy_agent: bad local task field %r (want key=value)" % kv)
            fields[key.strip()] = value.strip()
        if "id" not in fields or "endpoint" not in fields:
            raise ValueError("canopy_agent: a local task needs id= and endpoint=")
        tasks.append(
            local_task(
                fields["id"],
                fields["endpoint"],
                duration_min=int(fields.get("duration", 10)),
                min_duration_ms=int(fields.get("min_duration_ms", 0)),
                dump_period_ms=int(fields.get("dump_period_ms", 10)),
                max_sampling_count=int(fields.get("max_sampling_count", 5)),
            )
        )
    return tasks


def local_task(task_id, endpoint, duration_min=10, min_duration_ms=0, dump_period_ms=10, max_sampling_count=5,
               start_time_ms=None):
    import time

    now = int(time.time() * 1000)
    return {
        "task_id": task_id,
        "serial": "local-" + task_id,
        "endpoint": endpoint,
        "duration_min": duration_min,
        "min_duration_ms": min_duration_ms,
        "dump_period_ms": dump_period_ms,
        "max_sampling_count": max_sampling_count,
        "start_time_ms": now if start_time_ms is None else start_time_ms,
        "create_time_ms": now,
        "local": True,
    }
