"""`canopy validate`: good configs exit 0; bad ones exit 1 with FILE:LINE:COL errors."""
import argparse
import os
import re
import subprocess
import tempfile

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
    for good in ["config/canopy.yaml"]:
        r = run(args.bin, os.path.join(root, good))
        assert r.returncode == 0, (good, r.stderr)
        passed += 1
    r = run(args.bin, os.path.join(d, "does-not-exist.yaml"))
    assert r.returncode == 1 and "does-not-exist.yaml:1:1: cannot open config" in r.stderr, r.stderr
    passed += 1
    print("%d passed, 0 failed" % (passed + 0))


if __name__ == "__main__":
    main()
