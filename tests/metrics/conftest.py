"""Parametrises metric tests over every fixture case (see metric_fixtures)."""

import json

import pytest
from metric_fixtures import depth_cases
from metric_fixtures import fid_cases
from metric_fixtures import fixture_dir
from metric_fixtures import pq_cases


def pytest_generate_tests(metafunc):
    for name, cases in (("pq_case", pq_cases), ("fid_case", fid_cases),
                        ("depth_case", depth_cases)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, cases())


@pytest.fixture(scope="session")
def fixtures_root():
    return fixture_dir()


@pytest.fixture(scope="session")
def pq_categories(fixtures_root):
    with open(fixtures_root / "pq" / "categories.json") as f:
        return json.load(f)

