"""Metric reference fixtures: location and the cases to run.

The fixture folder is ``$UVIM_METRIC_FIXTURES`` or, by default,
``<repo>/../shared/fixtures/metrics``. Cases are every name listed in its
``manifest.json`` (``pq_cases``, ``fid_cases``, ``depth_cases``) that is also
present on disk, so another fixture set with other names can be dropped in.
"""

import json
import os
from pathlib import Path

from common import REPO


def fixture_dir():
    env = os.environ.get("UVIM_METRIC_FIXTURES")
    if env:
        return Path(env).resolve()
    return (REPO / ".." / "shared" / "fixtures" / "metrics").resolve()


def _manifest():
    path = fixture_dir() / "manifest.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def _listed(key):
    cases = _manifest().get(key, {})
    return list(cases) if isinstance(cases, (dict, list)) else []


def pq_cases():
    root = fixture_dir() / "pq"
    return [c for c in _listed("pq_cases") if (root / c / "arrays.npz").is_file()]


def fid_cases():
    root = fixture_dir() / "fid"
    return [c for c in _listed("fid_cases")
            if (root / f"{c}.npz").is_file() and (root / f"{c}.json").is_file()]


def depth_cases():
    root = fixture_dir() / "depth"
    return [c for c in _listed("depth_cases")
            if (root / f"{c}.npz").is_file() and (root / f"{c}.json").is_file()]
