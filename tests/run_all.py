"""Runs the whole suite on JAX, then the `multibackend` tests on TensorFlow
and PyTorch, each in its own process (Keras fixes its backend at import).

Usage: python tests/run_all.py [extra pytest args]
Prints one closing line "N passed, N failed, N skipped" over all runs and
exits non-zero if any run failed.
"""

import os
import re
import subprocess
import sys

RUNS = [
    ("jax", []),
    ("tensorflow", ["-m", "multibackend and not large"]),
    ("torch", ["-m", "multibackend and not large"]),
]


def main(extra):
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    status = 0
    for backend, args in RUNS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *extra]
        print(f"\n=== KERAS_BACKEND={backend}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(proc.stdout, flush=True)
        lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last):
            totals["error" if word.startswith("error") else word] += int(count)
        if proc.returncode not in (0, 5):
            status = 1
    failed = totals["failed"] + totals["error"]
    print(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
