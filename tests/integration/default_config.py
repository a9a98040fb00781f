"""`canopy run` with no -c (what `make run` does) serves agents at the
default address with no config at all, and writes their snapshots to
./canopy-data."""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from cnutil import Collector, loadgen  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="canopy-default-")
    # The embedded config listens on the default ipc path; tests must not clash
    # with a collector a developer runs, so move it with the documented env var.
    sock = "ipc://%s/canopy.sock" % work
    col = Collector(args.bin, None, workdir=work,
                    env={"CANOPY_LISTEN": sock, "CANOPY_LISTEN_TCP": "tcp://127.0.0.1:0",
                         "CANOPY_DATA_DIR": os.path.join(work, "data")}).start()
    try:
        res = loadgen(args.bin, sock, agents=2, batches=5, batch_size=50, depth=5, tasks=1)
    finally:
        rc = col.stop()
    assert rc == 0, col.read_log()
    assert res["acked"] == 10, res
    lines = open(os.path.join(work, "data", "task-0.jsonl")).read().count("\n")
    assert lines == 500, lines
    assert "embedded default config" in col.read_log()
    shutil.rmtree(work, ignore_errors=True)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
