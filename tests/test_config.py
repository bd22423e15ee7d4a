"""config.from_dict: every config dataclass round-trips through JSON; unknown keys, bad values and old files."""

from __future__ import annotations

import json

import pytest

from dcgen import config
from dcgen.data.grid import GRIDS, Grid
from dcgen.diffusion.schedule import ScheduleConfig
from dcgen.metrics.feature_nets import FeatureNetsConfig
from dcgen.metrics.proxy_task import ProxyTask
from dcgen.models.dit import DiTConfig
from dcgen.models.vae import VAEConfig
from dcgen.presets import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_configs_round_trip_through_json(name):
    p = PRESETS[name]
    for cfg in (p.grid, p.vae, p.dit, ScheduleConfig()):
        again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and type(again) is type(cfg)
    feats = FeatureNetsConfig.for_grid(p.grid, ProxyTask())
    again = FeatureNetsConfig.from_dict(json.loads(json.dumps(feats.to_dict())))
    assert json.dumps(again.to_dict()) == json.dumps(feats.to_dict())


def test_unknown_keys_and_bad_values_name_the_class_and_field():
    with pytest.raises(ValueError, match=r"Grid: unknown keys \['colour'\]; expected a subset of"):
        Grid.from_dict({**GRIDS["debug"].to_dict(), "colour": 1})
    with pytest.raises(ValueError, match=r"DiT needs depth >= 1 and a width divisible by heads, got depth=0"):
        DiTConfig.from_dict({**PRESETS["debug"].dit.to_dict(), "depth": 0})
    with pytest.raises(ValueError, match=r"DiTConfig: .*missing 1 required positional argument: 'depth'"):
        DiTConfig.from_dict({k: v for k, v in PRESETS["debug"].dit.to_dict().items() if k != "depth"})
    with pytest.raises(ValueError, match=r"lift_norm='yes', expected true or false"):
        VAEConfig.from_dict({**PRESETS["debug"].vae.to_dict(), "lift_norm": "yes"})
    with pytest.raises(ValueError, match="expected a mapping"):
        config.from_dict(Grid, [1, 2])


def test_files_written_before_a_field_read_as_they_meant():
    d = PRESETS["debug"].dit.to_dict()
    del d["prediction"]
    assert DiTConfig.from_dict(d).prediction == "eps"  # LEGACY_DEFAULTS, not today's default "v"
    g = GRIDS["debug"].to_dict()
    del g["layout_downsample"]
    assert Grid.from_dict(g) == GRIDS["debug"]


def test_read_json_names_the_file(tmp_path):
    good = tmp_path / "grid.json"
    good.write_text(json.dumps(GRIDS["small"].to_dict()))
    assert config.read_json(Grid, good) == GRIDS["small"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        config.read_json(Grid, bad)
    with pytest.raises(ValueError, match=r"missing\.json: no such config file"):
        config.read_json(Grid, tmp_path / "missing.json")
