"""The EMA of the DiT weights: the plain average, its warm-up, and the errors."""

from __future__ import annotations

import pytest
import torch

from dcgen.train.ema import EMA


def _net(value: float) -> torch.nn.Linear:
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, value)
    return net


def test_plain_update_moves_by_one_minus_decay():
    net = _net(0.0)
    ema = EMA(net, decay=0.9)
    torch.nn.init.constant_(net.weight, 1.0)
    ema.update(net)
    assert ema.shadow.weight.item() == pytest.approx(0.1)


def test_warm_up_follows_the_early_weights_then_reaches_the_decay():
    net = _net(0.0)
    ema = EMA(net, decay=0.999)
    torch.nn.init.constant_(net.weight, 1.0)
    ema.update(net, step=0)  # decay 1/10: the average is mostly the trained weights already
    assert ema.shadow.weight.item() == pytest.approx(0.9)
    assert ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(100_000) == 0.999
    # after 300 steps the initial weights keep a small share, not the 0.999**300 = 74 % of the plain average
    for step in range(1, 300):
        ema.update(net, step=step)
    assert 1.0 - ema.shadow.weight.item() < 0.01


def test_decay_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="EMA decay must be in"):
        EMA(_net(0.0), decay=1.0)
