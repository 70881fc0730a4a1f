"""Runs the whole suite on JAX, then the `multibackend` tests on TensorFlow
and PyTorch, each in its own process (Keras fixes its backend at import).

Usage: python tests/run_all.py [--fast] [extra pytest args]

--fast: the fast tier, for quick iterations: leaves out the tests marked
`slow` (longer than ~5 s each): on JAX `-m "not large and not slow"`, on
TensorFlow and PyTorch `-m "multibackend and not large and not slow"`.
Every test file keeps at least one test in it where sensible, so each
module is still imported and touched; the full run stays the reference
before a commit.

Each run's output streams as it happens; at the end a summary line per
backend (counts and time) and one closing line "total: N passed, N failed,
N skipped" over all runs. Exits non-zero if any run failed.
"""

import os
import re
import subprocess
import sys
import time

RUNS = [
    ("jax", []),
    ("tensorflow", ["-m", "multibackend and not large"]),
    ("torch", ["-m", "multibackend and not large"]),
]
FAST_RUNS = [  # --fast
    ("jax", ["-m", "not large and not slow"]),
    ("tensorflow", ["-m", "multibackend and not large and not slow"]),
    ("torch", ["-m", "multibackend and not large and not slow"]),
]
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?)")


def run(backend, args, extra):
    """Runs pytest for one backend, echoing its output line by line; returns
    (return code, {passed, failed, skipped, error}, seconds)."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *extra]
    print(f"\n=== KERAS_BACKEND={backend}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        if COUNTS.search(line):
            last = line  # pytest's closing "N passed, N skipped in S s"
    proc.wait()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for count, word in COUNTS.findall(last):
        counts["error" if word.startswith("error") else word] += int(count)
    return proc.returncode, counts, time.monotonic() - start


def main(extra):
    runs = RUNS
    if "--fast" in extra:
        runs = FAST_RUNS
        extra = [a for a in extra if a != "--fast"]
    results, status = [], 0
    for backend, args in runs:
        code, counts, seconds = run(backend, args, extra)
        results.append((backend, counts, seconds))
        if code not in (0, 5):  # 5: nothing collected
            status = 1
    print("\n=== summary")
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for backend, counts, seconds in results:
        print(f"{backend:>10}: {counts['passed']} passed, {counts['failed'] + counts['error']} "
              f"failed, {counts['skipped']} skipped in {seconds / 60:.1f} min", flush=True)
        for key in totals:
            totals[key] += counts[key]
    failed = totals["failed"] + totals["error"]
    print(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
