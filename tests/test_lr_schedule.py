"""The learning-rate warm-up: unchanged for every shipped config's run (so their work dirs resume
as before), shortened to a quarter of a short run so that a smoke run actually trains."""

import glob
import os

import ml_collections
import numpy as np
import optax
import pytest

from unigen.training.config import load_config_file
from unigen.training.state import effective_warmup, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _old_schedule(t):
    """The schedule as written before the cap (warm-up exactly train.warmup_steps)."""
    w = max(t.warmup_steps, 1)
    if t.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, t.lr, w, max(t.steps, t.warmup_steps + 1), t.lr * 0.1)
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, w), optax.constant_schedule(t.lr)], [w])


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                                         if os.path.basename(p) != "common.py"),  # shared sections, not a run
                         ids=os.path.basename)
def test_every_shipped_config_keeps_its_schedule(path):
    t = load_config_file(path).train
    assert effective_warmup(t.warmup_steps, t.steps) == t.warmup_steps
    _, schedule = make_optimizer(t)
    steps = np.unique(np.linspace(0, t.steps, 97).astype(int).tolist() + [t.warmup_steps, t.warmup_steps + 1])
    np.testing.assert_array_equal([schedule(s) for s in steps], [_old_schedule(t)(s) for s in steps])


@pytest.mark.parametrize("schedule_kind", ["cosine", "constant"])
def test_a_short_run_warms_up_over_a_quarter_of_it(schedule_kind):
    t = ml_collections.ConfigDict(dict(lr=2e-3, warmup_steps=200, steps=300, lr_schedule=schedule_kind, grad_clip=1.0,
                                       b1=0.9, b2=0.99, weight_decay=0.0))
    assert effective_warmup(200, 300) == 75 and effective_warmup(200, 800) == 200 and effective_warmup(0, 10) == 0
    _, schedule = make_optimizer(t)
    assert float(schedule(0)) == 0.0 and float(schedule(74)) < 2e-3
    np.testing.assert_allclose(float(schedule(75)), 2e-3, rtol=1e-6)  # the full rate after a quarter of the run
    assert float(schedule(299)) > (2e-4 if schedule_kind == "cosine" else 1.99e-3)
