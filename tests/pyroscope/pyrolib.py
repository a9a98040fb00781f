"""Helpers of the pyroscope exporter tests: the exporter's YAML, a static task
the registry knows (so profiles get its endpoint and dump period), and the
checks every test shares (labels, time ranges, contiguous intervals, counts
against the file exporter's snapshots). The collector, fleet and load
helpers are tests/oap/oaplib.py's."""
import collections
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "oap"))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402,F401
import standin_pyroscope  # noqa: E402,F401

INTERVAL_S = 2


def pyroscope_yaml(url, interval_s=INTERVAL_S, delay="1s", extra=""):
    return ('    url: "%s"\n    interval: %ds\n    delay: %s\n    labels:\n      env: test\n      region: eu-1\n%s'
            % (url, interval_s, delay, extra))


def static_task(task_id, service, endpoint, dump_period="10ms", duration="10m", max_sampling_count=1000):
    return """  static:
    - id: %s
      service: %s
      endpoint: "%s"
      duration: %s
      min_duration_threshold: 0ms
      dump_period: %s
      max_sampling_count: %d
""" % (task_id, service, endpoint, duration, dump_period, max_sampling_count)


def snapshots_of(directory, task_id):
    """The file exporter's snapshots of a task: [time_ms]."""
    return [o["time"] for (t, _, _), o in oaplib.read_jsonl_dir(directory).items() if t == task_id]


def check_pushes(pushes, task_id, times_ms, interval_s=INTERVAL_S, expect_labels=None, allow_late=False):
    """The checks every test makes on the pushes of one task:
    - one push per (labels, interval), intervals aligned and interval_s long;
    - the intervals are contiguous (no gap, no overlap) from the first to the last;
    - each push's sample count is the number of the task's snapshots whose time falls
      in its [from, until) (with allow_late, only the total must match);
    - the wall sample type is count x dump period when the mode samples.
    Returns the pushes sorted by from."""
    mine = sorted((p for p in pushes if p.labels.get("task_id") == task_id), key=lambda p: p.from_s)
    check(mine, "no push for task %s (pushes: %d)" % (task_id, len(pushes)))
    seen = collections.Counter((p.key(), p.from_s) for p in mine)
    twice = [k for k, n in seen.items() if n > 1]
    check(not twice, "intervals pushed more than once: %r" % twice[:3])
    for p in mine:
        check(p.format == "pprof", "format=%r" % p.format)
        check(p.until_s - p.from_s == interval_s and p.from_s % interval_s == 0,
              "interval [%d, %d) is not an aligned %d s" % (p.from_s, p.until_s, interval_s))
        check(p.metric == "wall", "Pyroscope would file this profile as %r, not wall: %r" % (p.metric, p.sample_types))
        check(p.sample_types == [("samples", "count"), ("wall", "nanoseconds")], "sample types %r" % p.sample_types)
        check(p.period_type == ("wall", "nanoseconds"), "period type %r" % (p.period_type,))
        check(p.profile.time_nanos == p.from_s * 10**9 and p.profile.duration_nanos == interval_s * 10**9,
              "the pprof's own time range differs from from/until")
        check(p.samples > 0, "a push without samples: %r" % p.query)
        for k, v in (expect_labels or {}).items():
            check(p.labels.get(k) == v, "label %s=%r, expected %r (labels %r)" % (k, p.labels.get(k), v, p.labels))
        if p.labels.get("mode") in ("sampling", "thread") and p.profile.period:
            check(p.totals[1] == p.samples * p.profile.period,
                  "wall %d ns is not %d snapshots x %d ns" % (p.totals[1], p.samples, p.profile.period))
    by_interval = collections.defaultdict(int)
    for p in mine:
        by_interval[p.from_s] += p.samples
    froms = sorted(by_interval)
    gaps = [f for f in range(froms[0], froms[-1] + 1, interval_s) if f not in by_interval]
    check(not gaps, "intervals without a push between the first and the last: %r" % gaps[:5])
    total = sum(by_interval.values())
    check(total == len(times_ms), "pushes hold %d samples, the collector received %d snapshots of %s"
          % (total, len(times_ms), task_id))
    if not allow_late:
        want = collections.Counter((t // 1000) // interval_s * interval_s for t in times_ms)
        check(dict(want) == dict(by_interval), "samples per interval differ from the snapshots' times:\n%r\n%r"
              % (sorted(want.items())[:8], sorted(by_interval.items())[:8]))
    return mine


def go_pprof_raw(path):
    """`go tool pprof -raw` of a push, or None when Go is not installed."""
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go") else None)
    if not go:
        return None
    home = tempfile.mkdtemp(prefix="canopy-go-")
    try:
        r = subprocess.run([go, "tool", "pprof", "-raw", path], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HOME=home, GOCACHE=os.path.join(home, "cache"), PPROF_TMPDIR=home))
        check(r.returncode == 0, "go tool pprof -raw failed on %s:\n%s" % (path, r.stderr[-2000:]))
        return r.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)
