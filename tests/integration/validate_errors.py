"""`canopy validate`: good configs exit 0; bad ones exit 1 with FILE:LINE:COL errors."""
import argparse
import os
import re
import shutil
import subprocess
import tempfile

# A valid pipeline (7 lines), so that a case's only error is its own.
PIPE = "receivers:\n  nng:\nexporters:\n  debug:\nservice:\n  pipelines:\n    p: {receivers: [nng], exporters: [debug]}\n"
TASK = "tasks:\n  static:\n    - id: c\n      service: s\n      endpoint: /e\n"

CASES = [
    ("unknown key", "receivers:\n  nng:\n    listen: [ipc:///tmp/x.sock]\n    colour: blue\n",
     r":4:5: unknown option \"colour\""),
    ("wrong type", "receivers:\n  nng:\n    contexts: many\n", r":3:15: contexts: \"many\" is not an integer"),
    ("missing component",
     "receivers:\n  nng:\nexporters:\n  debug:\nservice:\n  pipelines:\n    p:\n      receivers: [nng]\n"
     "      exporters: [file/missing]\n",
     r":9:19: service::pipelines::p: references exporter \"file/missing\" which is not configured"),
    ("broken yaml", "receivers:\n  nng: [\n", r":\d+:\d+: invalid YAML"),
    ("bad duration", "processors:\n  merge_by_task:\n    flush_interval: soon\n",
     r":3:21: flush_interval: \"soon\" is not a duration"),
    # Continuous tasks (docs/configuration.md, tasks): a flag, a window of 1s to 1h, no duration.
    ("continuous with duration", PIPE + TASK + "      continuous: true\n      duration: 5m\n",
     r":14:17: duration: a continuous task never ends; remove duration or continuous"),
    ("window without continuous", PIPE + TASK + "      window: 5s\n",
     r":13:15: window: only a continuous task \(continuous: true\) has a window"),
    ("window too short", PIPE + TASK + "      continuous: true\n      window: 500ms\n",
     r":14:15: window must be between 1000 and 3600000"),
    ("continuous not a boolean", PIPE + TASK + "      continuous: maybe\n",
     r":13:19: continuous: \"maybe\" is not true or false"),
]


def run(bin_dir, path):
    return subprocess.run([os.path.join(bin_dir, "canopy"), "validate", "-c", path], capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="canopy-validate-")
    passed = 0
    for name, text, pattern in CASES:
        path = os.path.join(d, name.replace(" ", "_") + ".yaml")
        with open(path, "w") as f:
            f.write(text)
        r = run(args.bin, path)
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert re.search(re.escape(path) + pattern, r.stderr), (name, r.stderr)
        passed += 1
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    good_cont = os.path.join(d, "continuous.yaml")
    with open(good_cont, "w") as f:
        f.write(PIPE + TASK + "      continuous: true\n      window: 30s\n      max_sampling_count: 3\n")
    r = run(args.bin, good_cont)
    assert r.returncode == 0, ("continuous", r.stderr)
    passed += 1
    for good in ["config/canopy.yaml"]:
        r = run(args.bin, os.path.join(root, good))
        assert r.returncode == 0, (good, r.stderr)
        passed += 1
    r = run(args.bin, os.path.join(d, "does-not-exist.yaml"))
    assert r.returncode == 1 and "does-not-exist.yaml:1:1: cannot open config" in r.stderr, r.stderr
    passed += 1
    shutil.rmtree(d, ignore_errors=True)
    print("%d passed, 0 failed" % (passed + 0))


if __name__ == "__main__":
    main()
