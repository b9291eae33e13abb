"""Learning-rate schedules equal their closed forms at given iterations."""

from __future__ import annotations

import pytest

from nnssl.config import OptimConfig, TrainConfig
from nnssl.engine.optim import lr_at


def test_poly_closed_form() -> None:
    train = TrainConfig(num_epochs=10, iterations_per_epoch=100)
    optim = OptimConfig(lr=1e-2, schedule="poly", poly_exponent=0.9)
    assert lr_at(0, optim, train) == pytest.approx(1e-2)
    assert lr_at(500, optim, train) == pytest.approx(1e-2 * 0.5**0.9)
    assert lr_at(999, optim, train) == pytest.approx(1e-2 * (1 / 1000) ** 0.9)
    assert lr_at(5000, optim, train) == lr_at(999, optim, train)


def test_warmup_poly_closed_form() -> None:
    train = TrainConfig(num_epochs=100, iterations_per_epoch=10)
    optim = OptimConfig(lr=3e-4, schedule="warmup_poly", warmup_epochs=50, poly_exponent=0.9)
    assert lr_at(0, optim, train) == pytest.approx(3e-4 / 500)
    assert lr_at(249, optim, train) == pytest.approx(3e-4 * 250 / 500)
    assert lr_at(499, optim, train) == pytest.approx(3e-4)
    assert lr_at(500, optim, train) == pytest.approx(3e-4)
    assert lr_at(750, optim, train) == pytest.approx(3e-4 * 0.5**0.9)
    values = [lr_at(t, optim, train) for t in range(1000)]
    assert max(values) == pytest.approx(3e-4) and values.index(max(values)) in (499, 500)


def test_constant_schedule() -> None:
    train = TrainConfig(num_epochs=2, iterations_per_epoch=5)
    assert lr_at(7, OptimConfig(lr=0.1, schedule="constant"), train) == 0.1
