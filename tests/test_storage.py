"""Run directories and checkpoints on a URI, exercised with file:// (the same pyarrow code path as s3:// or gs://)."""

from __future__ import annotations

import json

import pytest

from dcgen import checkpoint, storage


def test_uri_path_operations(tmp_path):
    root = storage.run_path(f"file://{tmp_path}/run")
    assert isinstance(root, storage.UriPath) and not root.exists() and not root.is_dir()
    (root / "run.json").write_text('{"a": 1}')
    (root / "ray" / "checkpoint_1").mkdir()
    (root / "ray" / "checkpoint_0").mkdir()
    assert root.is_dir() and (root / "run.json").is_file() and json.loads((root / "run.json").read_text()) == {"a": 1}
    assert [p.name for p in sorted((root / "ray").glob("checkpoint_*"))] == ["checkpoint_0", "checkpoint_1"]
    assert any((root / "ray").iterdir())
    storage.remove_dir(str(root))
    assert not root.exists() and not (tmp_path / "run").exists()
    assert storage.run_path(tmp_path / "x") == (tmp_path / "x").resolve()


def test_checkpoint_saved_to_and_loaded_from_a_uri(tmp_path):
    import torch

    uri = f"file://{tmp_path}/ckpt"
    assert checkpoint.save(uri, kind="vae", config={"k": 1}, state={"w": torch.ones(3)}, step=7) == uri
    meta, state = checkpoint.load(uri, kind="vae")
    assert meta["step"] == 7 and torch.equal(state["w"], torch.ones(3))
    local = checkpoint.save(tmp_path / "local", kind="vae", config={"k": 1}, state={"w": torch.ones(3)}, step=7)
    assert checkpoint.checkpoint_id(uri) == checkpoint.checkpoint_id(local)
    # replacing the checkpoint at the URI is seen by the next read (the cache is keyed by the files)
    checkpoint.save(uri, kind="vae", config={"k": 1}, state={"w": torch.zeros(3)}, step=8)
    assert checkpoint.read_meta(uri)["step"] == 8
    with pytest.raises(ValueError, match="not a dcgen checkpoint"):
        checkpoint.read_meta(f"file://{tmp_path}/missing")


def test_latent_normalisation_refuses_bad_statistics(tmp_path):
    from types import SimpleNamespace

    from dcgen.diffusion.latent_norm import LatentNorm
    from dcgen.train.runs import latent_norm_of

    with pytest.raises(ValueError, match="C means and C positive stds"):
        LatentNorm((0.0, 0.0), (1.0, 0.0))
    with pytest.raises(ValueError, match="both lo and hi, or neither"):
        LatentNorm((0.0,), (1.0,), lo=(-1.0,))
    with pytest.raises(ValueError, match="lo < hi"):
        LatentNorm((0.0,), (1.0,), lo=(1.0,), hi=(-1.0,))
    unfinished = SimpleNamespace(path="lat.zarr", meta={"latent_mean": None, "latent_std": None})
    with pytest.raises(ValueError, match="lat.zarr: the latent store has no latent statistics"):
        latent_norm_of(unfinished)
    norm = LatentNorm.from_statistics([1.0], [2.0], [-3.0], [5.0], margin=0.1)
    assert norm.lo == pytest.approx((-2.0 - 0.4,)) and norm.hi == pytest.approx((2.0 + 0.4,))
    assert LatentNorm.from_dict(norm.to_dict()) == norm
