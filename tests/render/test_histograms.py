"""Component-size bar charts of the fidelity report: powers-of-two bins, shares per series, and the picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dcgen.render.histograms import binned_shares, object_histograms, size_bins


def test_bins_double_and_the_last_is_open_when_they_run_out():
    assert size_bins(1) == [(1, 1)]
    assert size_bins(40) == [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 64)]
    wide = size_bins(10 ** 6)
    assert len(wide) == 10 and wide[-1] == (257, None)
    sizes = np.array([1, 1, 3, 4, 9, 5000])
    shares = binned_shares(sizes, wide)
    assert shares.sum() == pytest.approx(1.0) and shares[0] == 2 / 6 and shares[2] == 2 / 6 and shares[-1] == 1 / 6
    assert binned_shares(np.zeros(0, np.int64), wide).sum() == 0.0


def test_a_chart_has_a_panel_per_class_and_a_class_mix(tmp_path):
    sizes = {"vehicle": {"real": np.array([9, 9, 12]), "generated": np.array([4, 5])},
             "pole": {"real": np.array([4, 4]), "generated": np.zeros(0, np.int64)}}
    mix = {"real": {"building": 0.5, "vehicle": 0.5}, "generated": {"building": 0.7, "vehicle": 0.3}}
    path = object_histograms(tmp_path / "chart.png", sizes, mix, title="test")
    with Image.open(path) as png:
        assert png.size == (800, 29 + 270 + 270)  # two panels side by side, the class mix beneath
        colours = np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 3  # bars in the series colours and text, not a blank canvas


def test_charts_refuse_what_they_cannot_show(tmp_path):
    with pytest.raises(ValueError, match="nothing to draw"):
        object_histograms(tmp_path / "x.png", {}, {})
    five = {f"set {i}": np.array([1]) for i in range(5)}
    with pytest.raises(ValueError, match="class vehicle: 5 series; at most 4 can be told apart"):
        object_histograms(tmp_path / "x.png", {"vehicle": five}, {})
    assert not (tmp_path / "x.png").exists()
