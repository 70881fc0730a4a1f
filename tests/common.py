"""Shared test helpers (import as `from common import ...`): the repository
and fixture paths, `to_numpy`, the big_vision io fixtures, and running a
command in a subprocess (`run_command`, `run_json`).

Defined here only: the test modules, tests/presets_helpers.py (the preset
tests' server and fixtures) and tests/metrics import them from here; tiny
models and batches live in tests/helpers.py. Kept out of conftest.py:
tests/metrics has its own conftest, and a `from conftest import` would pick
whichever conftest module loaded first.
"""

import json
import os
import pathlib
import subprocess

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
BIG_VISION_FIXTURES = pathlib.Path(
    os.environ.get("UVIM_BIG_VISION_FIXTURES", REPO.parent / "shared" / "fixtures" / "big_vision")
)
TEST_FIXTURES = REPO / "tests" / "fixtures"  # small files kept in the repository
LAYOUT2 = TEST_FIXTURES / "weights_layout2"  # a preset saved with weights layout 2


def to_numpy(x):
    """A backend tensor (or anything array-like) as a numpy array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def big_vision_io_files(pattern):
    """All fixture io files matching `pattern` (e.g. 'stageI_*_io.npz')."""
    return sorted(BIG_VISION_FIXTURES.glob(pattern))


def load_io(path):
    """(arrays, meta) of a big_vision io fixture."""
    io = np.load(path)
    return io, json.loads(str(io["meta/config_json"]))


def params_file(io_path):
    return io_path.with_name(io_path.name.replace("_io.npz", "_params.npz"))


# -- subprocesses ------------------------------------------------------------------------
def command_failure(args, returncode, stdout, stderr, tail=3000, backend=None):
    """The message for a command that exited with `returncode`: the command
    (each argument cut to 200 characters; `backend`: its KERAS_BACKEND), its
    exit status and the last `tail` characters of its stderr and stdout."""
    command = " ".join(str(a) if len(str(a)) <= 200 else str(a)[:200] + "..." for a in args)
    if backend:
        command = f"KERAS_BACKEND={backend} {command}"
    return (f"command exited with {returncode}: {command}\n"
            f"--- stderr (tail) ---\n{(stderr or '')[-tail:]}\n"
            f"--- stdout (tail) ---\n{(stdout or '')[-tail:]}")


def assert_succeeded(proc, tail=3000, backend=None):
    """Returns the finished process `proc` (a CompletedProcess) if it exited
    with 0, else raises AssertionError with `command_failure`'s message."""
    if proc.returncode != 0:
        raise AssertionError(command_failure(proc.args, proc.returncode, proc.stdout,
                                             proc.stderr, tail, backend))
    return proc


def last_json_line(stdout):
    """The last non-empty line of `stdout`, parsed as JSON (the scripts the
    tests run print their result there, after any log lines)."""
    lines = stdout.strip().splitlines()
    assert lines, "the command printed nothing on stdout"
    try:
        return json.loads(lines[-1])
    except ValueError as e:
        raise AssertionError(
            f"the last stdout line is not JSON ({e}): {lines[-1][-3000:]!r}") from e


def run_command(args, *, env=None, backend=None, timeout=600, cwd=None, check=True):
    """Runs `args` (str() of each) in a subprocess, capturing stdout and
    stderr as text; returns the CompletedProcess.

    env: the child's whole environment (default: this process's);
    backend: sets KERAS_BACKEND in it. check: raise AssertionError showing
    the command, its exit status and the tail of its stderr/stdout unless it
    exited with 0 (`check=False` leaves the status to the caller). A command
    still running after `timeout` seconds raises subprocess.TimeoutExpired.
    """
    env = dict(os.environ if env is None else env)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    proc = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    return assert_succeeded(proc, backend=env.get("KERAS_BACKEND")) if check else proc


def run_json(args, *, env=None, backend=None, timeout=600, cwd=None, check=True):
    """`run_command(args, ...)` then the last line of its stdout parsed as
    JSON (see `last_json_line`): for scripts that print their result as one
    JSON line."""
    proc = run_command(args, env=env, backend=backend, timeout=timeout, cwd=cwd, check=check)
    try:
        return last_json_line(proc.stdout)
    except AssertionError as e:
        failure = command_failure(proc.args, proc.returncode, proc.stdout, proc.stderr,
                                  backend=backend or (env or os.environ).get("KERAS_BACKEND"))
        raise AssertionError(f"{e}\n{failure}") from None
