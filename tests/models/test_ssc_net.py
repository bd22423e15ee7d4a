"""The LMSCNet-style scene completion network: shapes, gradients, config checks, and a one-batch overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgen.data.grid import GRIDS
from dcgen.data.lidar_input import lidar_hits
from dcgen.data.synth_city import generate_clip
from dcgen.metrics.recon_iou import IoUAccumulator
from dcgen.models.ssc_net import SSC_PRESETS, SSCNet, SSCNetConfig, ssc_preset
from dcgen.train.ssc_loop import class_weights_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEBUG = SSC_PRESETS["debug"]


def test_every_preset_matches_its_grid_and_round_trips():
    for name, cfg in SSC_PRESETS.items():
        assert cfg.size == GRIDS[name].size and cfg.num_classes == GRIDS[name].num_classes
        assert SSCNetConfig.from_dict(cfg.to_dict()) == cfg


def test_forward_backward_shapes_and_gradients():
    torch.manual_seed(0)
    model = SSCNet(DEBUG)
    hits = (torch.rand(3, *DEBUG.size) < 0.2).float()
    logits = model(hits)
    assert logits.shape == (3, DEBUG.num_classes, *DEBUG.size)
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("change,message", [
    ({"size": [30, 32, 4]}, "divisible by 2^levels = 4"),
    ({"num_classes": 1}, "num_classes=1"),
    ({"width": 0}, "width=0"),
    ({"dilations": []}, "dilations=()"),
    ({"depth": 3}, "unknown SSCNetConfig keys ['depth']"),
])
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ValueError) as e:
        SSCNetConfig.from_dict({**DEBUG.to_dict(), **change})
    assert message in str(e.value)


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"expected \[B, 32, 32, 4\]"):
        SSCNet(DEBUG)(torch.zeros(2, 32, 32, 8))
    with pytest.raises(ValueError, match="unknown SSC preset 'tiny'"):
        ssc_preset("tiny")


def test_overfits_one_batch():
    """Two synthetic-city frames with their LiDAR hits: the network learns them almost exactly."""
    grid = GRIDS["debug"]
    occ_NXYZ = np.concatenate([generate_clip(grid, 0, i)["occupancy"][:1] for i in range(2)])
    hits_NXYZ = np.concatenate([lidar_hits(o[None], grid) for o in occ_NXYZ])
    torch.manual_seed(0)
    model = SSCNet(DEBUG)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    x, y = torch.from_numpy(hits_NXYZ), torch.from_numpy(occ_NXYZ.astype(np.int64))
    weights = class_weights_of(occ_NXYZ, DEBUG.num_classes)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y, weight=weights)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = IoUAccumulator(DEBUG.num_classes)
    acc.update(pred, y)
    assert float(loss.detach()) < 0.1 * first
    assert acc.miou() > 0.9, acc.table()
