"""Agent settings: keyword arguments to start(), else CANOPY_* environment variables, else defaults."""

import os

MODES = ("auto", "greenlet", "sampling", "thread")

# The collector's default nng receiver URL (plugins/receivers/nng, config/canopy.yaml).
DEFAULT_COLLECTOR = "ipc:///tmp/canopy.sock"
# The packaged collector's socket (canopy.service, docs/deploy.md): the default
# whenever it exists, so agents on a host running the package need no setting.
SERVICE_COLLECTOR = "ipc:///run/canopy/canopy.sock"


def default_collector():
    """SERVICE_COLLECTOR when its socket exists, else DEFAULT_COLLECTOR."""
    return SERVICE_COLLECTOR if os.path.exists(SERVICE_COLLECTOR[len("ipc://"):]) else DEFAULT_COLLECTOR

def flag(raw):
    """A boolean setting from the environment: 1/0, true/false, yes/no, on/off."""
    v = str(raw).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


flag.__name__ = "flag (1/0, true/false, yes/no, on/off)"

# name: (environment variable, type, default)
_SETTINGS = {
    "collector": ("CANOPY_COLLECTOR", str, None),  # None: default_collector(), when the agent starts
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
    # Greenlets spawned by a profiled greenlet (gevent.spawn, pools, raw
    # greenlet.greenlet, nested) are profiled under its segment, rooted at
    # the spawn site (docs/agent.md, "Child greenlets").
    "follow_children": ("CANOPY_FOLLOW_CHILDREN", flag, True),
    # Children registered at once per segment; more are not followed (counted
    # in stats()["children_dropped"]). They share max_segments' registry too.
    "max_children_per_segment": ("CANOPY_MAX_CHILDREN_PER_SEGMENT", int, 64),
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
    # TLS, for a tls+tcp:// collector (docs/security.md): PEM files. The CA is
    # required (an unverified TLS peer could be anyone); the client certificate
    # and its key are what a collector with client_auth: required asks for; the
    # server name defaults to the URL's host.
    "tls_ca_file": ("CANOPY_TLS_CA_FILE", str, None),
    "tls_cert_file": ("CANOPY_TLS_CERT_FILE", str, None),
    "tls_key_file": ("CANOPY_TLS_KEY_FILE", str, None),
    "tls_server_name": ("CANOPY_TLS_SERVER_NAME", str, None),
}

TLS_SETTINGS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")

# The client library reads the certificate and key files whole, up to 1 MiB
# (agent/src/sender.c, read_pem); a bigger file would fail only later, on the
# native thread, where nobody would see why. nng reads the CA file without a
# cap; a CA bundle past 16 MiB is surely a wrong path.
_MAX_PEM_BYTES = (1 << 20) - 1
_MAX_CA_BYTES = 16 << 20


class Config:
    """Resolved settings (attributes named like the keys of _SETTINGS)."""

    def __init__(self, **overrides):
        unknown = set(overrides) - set(_SETTINGS)
        if unknown:
            raise TypeError("canopy_agent: unknown setting(s): %s" % ", ".join(sorted(unknown)))
        self._source = {}  # name -> how the user spelled it, for error messages
        for name, (env, typ, default) in _SETTINGS.items():
            value = overrides.get(name)
            if value is not None:
                self._source[name] = name
            else:
                raw = os.environ.get(env)
                if raw is not None and raw != "":
                    try:
                        value = typ(raw)
                    except ValueError:
                        raise ValueError("canopy_agent: %s=%r is not a valid %s" % (env, raw, typ.__name__))
                    self._source[name] = env
            if value is None:
                value = default
            setattr(self, name, value)
        if self.mode not in MODES:
            raise ValueError("canopy_agent: mode must be one of %s, not %r" % ("|".join(MODES), self.mode))
        if not self.service:
            self.service = _default_service()
        if not self.collector:
            self.collector = default_collector()
        for name in TLS_SETTINGS:
            if not getattr(self, name):  # "" is as good as unset
                setattr(self, name, None)
        self._check_tls()

    def as_dict(self):
        return {name: getattr(self, name) for name in _SETTINGS}

    def _label(self, name, like=None):
        """The setting as the user gave it: CANOPY_TLS_CA_FILE, or tls_ca_file to start().
        A setting not given is named the way `like` was given."""
        if name in self._source:
            return self._source[name]
        keyword = like is not None and self._source.get(like) == like
        return name if keyword else _SETTINGS[name][0]

    def _check_tls(self):
        """Refuses TLS settings that cannot work, now, with the reason.

        The client library only reads the files when its native thread first
        dials the collector; a mistake found there would only show as batches
        never acked. Checked here, it fails start() (and gunicorn logs it).
        """
        given = [n for n in TLS_SETTINGS if getattr(self, n)]
        url = self.collector or ""
        if not url.startswith("tls+"):
            if given:
                raise ValueError(
                    "canopy_agent: %s is set but the collector URL %s=%s is not tls+tcp://; refusing to send "
                    "in clear (use a tls+tcp:// URL, or unset the TLS settings)"
                    % (", ".join(self._label(n) for n in given), self._label("collector"), url))
            return
        if not self.tls_ca_file:
            raise ValueError(
                "canopy_agent: the collector URL %s=%s needs %s, the CA certificate (PEM) that signed the "
                "collector's certificate"
                % (self._label("collector"), url, self._label("tls_ca_file", "collector")))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            has, lacks = ("tls_cert_file", "tls_key_file")
            if not self.tls_cert_file:
                has, lacks = lacks, has
            raise ValueError(
                "canopy_agent: %s is set without %s: a client certificate and its private key go together"
                % (self._label(has), self._label(lacks, has)))
        _check_pem(self._label("tls_ca_file"), self.tls_ca_file, "CERTIFICATE", _MAX_CA_BYTES)
        if self.tls_cert_file:
            _check_pem(self._label("tls_cert_file"), self.tls_cert_file, "CERTIFICATE", _MAX_PEM_BYTES)
            _check_pem(self._label("tls_key_file"), self.tls_key_file, "PRIVATE KEY", _MAX_PEM_BYTES)


def _check_pem(label, path, kind, max_bytes):
    """A readable regular file holding a PEM block of that kind ("CERTIFICATE"
    or "PRIVATE KEY"), not encrypted; ValueError naming the setting otherwise."""
    import re
    import stat

    def fail(why):
        raise ValueError("canopy_agent: %s=%s: %s" % (label, path, why))

    try:
        st = os.stat(path)
    except OSError as e:
        fail(e.strerror or str(e))
    # The library refuses anything else (a FIFO or a device could block or never end).
    if not stat.S_ISREG(st.st_mode):
        fail("not a regular file")
    if st.st_size > max_bytes:
        fail("larger than %d MiB" % ((max_bytes + 1) >> 20))
    # Unbuffered into a bytearray, so the one copy of a private key made here
    # can be wiped once looked at.
    buf = bytearray(st.st_size + 1)  # + 1: the last read sees the end of the file
    view = memoryview(buf)
    try:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while n < len(buf):
                got = f.readinto(view[n:])
                if not got:
                    break
                n += got
        text = view[:n]
        if kind == "PRIVATE KEY":
            m = re.search(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----", text)
            if not m:
                fail("no PEM private key in it (-----BEGIN ... PRIVATE KEY-----)")
            if b"ENCRYPTED" in m.group(1) or re.search(rb"Proc-Type: *4, *ENCRYPTED", text):
                fail("the private key is encrypted; the agent needs it without a passphrase")
        elif not re.search(rb"-----BEGIN CERTIFICATE-----", text):
            fail("no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    except OSError as e:
        fail(e.strerror or str(e))
    finally:
        view[:] = bytes(len(buf))  # same size: allowed while the views exist


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
               start_time_ms=None, continuous=False, window_ms=10000):
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
        "continuous": bool(continuous),
        "window_ms": window_ms if continuous else 0,
        "local": True,
    }
