"""The built-in default: `uvim-keras demo --quick` end to end, and its errors."""

import dataclasses
import json
import os
import sys

import pytest

from common import run_command


def _cli(*args, tmp_path, check=True):
    """`python -m uvim_keras *args` on JAX in tmp_path (check: assert exit status 0)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return run_command([sys.executable, "-m", "uvim_keras", *args], env=env, backend="jax",
                       cwd=tmp_path, timeout=900, check=check)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="runs once")
def test_demo_quick_writes_report_figure_and_models(tmp_path):
    out = tmp_path / "demo"
    _cli("demo", "--quick", "--quiet", "--out", str(out), tmp_path=tmp_path)
    report = json.loads((out / "panoptic_report.json").read_text())
    assert set(report["metrics"]) == {"no code", "oracle code", "UViM (T=0)"}
    for values in report["metrics"].values():
        assert 0 <= values["PQ"] <= 100
    assert report["quick"] is True and report["backend"] == "jax"
    markdown = (out / "panoptic_report.md").read_text()
    assert "| UViM (T=0) |" in markdown and "panoptic_examples.png" in markdown
    stats = report["code_diagnostics"]  # the LM on the held-out oracle codes
    for key in ("greedy_accuracy", "teacher_forced_accuracy", "previous_word_accuracy"):
        assert 0 <= stats[key] <= 1
    assert stats["nll"] > 0 and 1 <= stats["greedy_distinct_words"] <= report["config"]["code_len"]
    assert f"matches {stats['greedy_accuracy']:.0%} of the oracle's words" in markdown
    from PIL import Image

    with Image.open(out / "panoptic_examples.png") as im:
        assert im.size[0] > 300 and im.size[1] > 100
    for name in report["models"]:
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="runs once")
def test_depth_demo_reports_both_posterior_means(tmp_path):
    from uvim_keras.cli.demo import demo_config, run_demo

    config = dataclasses.replace(demo_config("depth", quick=True), train_examples=64,
                                 eval_examples=8, batch_size=16, no_code_epochs=1,
                                 stage1_epochs=1, stage2_epochs=1)
    report = run_demo(task="depth", out=str(tmp_path), config=config, verbose=0,
                      save_models=False)
    assert set(report["metrics"]) == {"no code", "oracle code", "UViM (T=0)",
                                      "no code (expected depth)", "UViM (mean of 8, T=1)"}
    for values in report["metrics"].values():
        assert 0 < values["RMSE"] < 10
    markdown = (tmp_path / "depth_report.md").read_text()
    assert "| no code (expected depth) |" in markdown and "| UViM (mean of 8, T=1) |" in markdown


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="runs once")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "segmentation"], "invalid choice: 'segmentation' (choose from 'panoptic'"),
        (["--stage1-epochs", "0"], "stage1_epochs=0; expected a positive value"),
        (["--size", "-8"], "size=-8; expected a positive value"),
        (["--seed", "-1"], "seed=-1; expected a non-negative int"),
        (["--out", "/proc/forbidden"], "out='/proc/forbidden' cannot be written"),
    ],
)
def test_demo_bad_arguments_give_one_line_errors(tmp_path, args, message):
    proc = _cli("demo", "--quick", "--quiet", *args, tmp_path=tmp_path, check=False)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if "error" in l]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_demo_task_choices_are_the_synthetic_tasks():
    from uvim_keras.cli import _DEMO_TASKS
    from uvim_keras.data.synthetic import SYNTHETIC_TASKS

    assert sorted(_DEMO_TASKS) == sorted(SYNTHETIC_TASKS)


def test_demo_recipes_change_the_papers_only_where_documented():
    """The demo's recipes are the paper's in miniature (what `ablate`
    varies) but for the time-budget changes TASK_CONFIGS documents."""
    from uvim_keras.cli import demo
    from uvim_keras.cli.ablate import ablation_config

    for task in demo.PAPER_CONFIGS:
        paper, ours = demo.paper_config(task), demo.demo_config(task)
        changed = {f.name for f in dataclasses.fields(paper)
                   if getattr(paper, f.name) != getattr(ours, f.name)}
        expected = {"panoptic": {"code_dropout", "no_code_epochs", "stage1_epochs",
                                 "stage2_epochs", "lm_layers"},
                    "depth": {"stage1_epochs", "stage2_epochs"}}.get(task, set())
        assert changed == expected, (task, changed)
        assert ablation_config(task).code_dropout == "random"
    assert demo.demo_config("panoptic").code_dropout == "none"


def test_progress_estimate_prices_the_lm_by_its_depth():
    from uvim_keras.cli import demo

    one, two = (demo.step_costs(dataclasses.replace(demo.DEFAULT_CONFIG, lm_layers=n))
                for n in (1, 2))
    assert two["stage II"] == 2 * one["stage II"] and two["stage I"] == one["stage I"]
    lines = []
    plan = demo.Plan({"no code": 10, "stage II": 10}, lines.append, costs=one)
    plan.per_unit = 1.0  # one second per no-code step
    assert plan.remaining("no code", 0) == 10 + 10 * one["stage II"]

