"""docs/configuration.md must be exactly what `canopy docs` prints, so the
reference can never drift from the options the components declare."""
import argparse
import difflib
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "configuration.md")
    generated = subprocess.run([os.path.join(args.bin, "canopy"), "docs"], capture_output=True, text=True,
                               check=True).stdout
    with open(path) as f:
        committed = f.read()
    if generated != committed:
        sys.stdout.writelines(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                                   "docs/configuration.md", "canopy docs"))
        sys.exit("docs/configuration.md is stale: run `build/bin/canopy docs > docs/configuration.md`")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
