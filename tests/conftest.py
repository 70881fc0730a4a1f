"""pytest configuration shared by all tests.

The backend is chosen by KERAS_BACKEND before Keras is imported
(`tests/run_all.py` runs the `multibackend` tests once per backend); shared
helpers live in tests/common.py.

Tiers: the default run leaves out `large` (pyproject's addopts); the fast
tier, `pytest -m "not slow"` (or `python tests/run_all.py --fast`), also
leaves out `slow`. A `-m` given on the command line replaces addopts' one,
so every `large` test is `slow` too (added here): `-m "not slow"` never
brings the large measurements in.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_itemcollected(item):
    """Marks every `large` test `slow` as well (see the module docstring)."""
    if item.get_closest_marker("large") is not None and item.get_closest_marker("slow") is None:
        item.add_marker("slow")
