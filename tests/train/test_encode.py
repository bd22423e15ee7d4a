"""Encoding a scene store into a latent store: round trip through the VAE, conditions and previous clips, the Ray
Data reader, and the errors a user can hit (grid mismatch, corrupt checkpoint, existing output)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcgen.checkpoint import checkpoint_id
from dcgen.cli import app
from dcgen.data.grid import GRIDS
from dcgen.data.latent_store import LatentStore, latent_batches, previous_clips
from dcgen.data.store import SceneStore
from dcgen.models.loading import load_vae
from dcgen.models.rollout import RolloutLayout
from dcgen.train.encode import encode_store


def test_previous_clips_follow_scenes_and_frames():
    scenes = ["a", "a", "b", "a", "b"]
    starts = [0, 4, 4, 8, 0]
    assert previous_clips(scenes, starts, 4).tolist() == [-1, 0, 4, 1, -1]
    assert previous_clips(scenes, starts, 8).tolist() == [-1, -1, -1, 0, -1]


def test_latents_decode_like_the_vae_on_mu(debug_city, debug_vae, debug_latents):
    latents = LatentStore.open(debug_latents)
    scenes = SceneStore.open(debug_city)
    vae = load_vae(debug_vae).model
    rollout = RolloutLayout(vae.dims, latents.patch)
    assert latents.complete and latents.vae_checkpoint_id == checkpoint_id(debug_vae)
    assert latents.num_clips == scenes.num_clips and latents.dims == vae.dims
    rows = np.array([0, 5, latents.num_clips - 1])
    stored = torch.from_numpy(latents.read(rows, ("latent",))["latent"])
    assert not stored[:, :, ~rollout.valid_mask()].any(), "padding must stay zero"
    occ = torch.from_numpy(scenes.read(latents.read(rows, ("clip_index",))["clip_index"], ("occupancy",))
                           ["occupancy"].astype(np.int64))
    with torch.no_grad():
        logits_ref, mu, _ = vae(occ, sample=False)
        logits = vae.decode(rollout.unpack(stored))
    assert torch.allclose(rollout.pack(mu), stored, atol=1e-5)
    assert torch.allclose(logits, logits_ref, atol=1e-4)
    # The stored latents came from other batches (and threads) than this forward pass, so the logits agree to
    # rounding, not bit for bit: the decoded classes must agree wherever the reference decides by more than twice
    # the allowed logit difference, and near-tie voxels (either class is right) must be rare.
    top2 = logits_ref.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * (1e-4 + 1e-5 * logits_ref.abs().amax(1))
    assert decided.float().mean() > 0.99
    assert torch.equal(logits.argmax(1)[decided], logits_ref.argmax(1)[decided])
    stats = latents.meta
    assert len(stats["latent_mean"]) == len(stats["latent_std"]) == vae.dims.channels
    assert all(s > 0 for s in stats["latent_std"])
    # the actors' moments give the statistics of exactly the stored latents, over the planes' pixels
    every = latents.read(slice(0, latents.num_clips), ("latent",))["latent"].astype(np.float64)
    flat = every[:, :, rollout.valid_mask().numpy()].transpose(1, 0, 2).reshape(vae.dims.channels, -1)
    np.testing.assert_allclose(stats["latent_mean"], flat.mean(1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["latent_std"], flat.std(1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["latent_min"], flat.min(1), rtol=1e-6)
    np.testing.assert_allclose(stats["latent_max"], flat.max(1), rtol=1e-6)


def test_attributes_match_the_schema(debug_latents):
    import json
    from pathlib import Path

    import jsonschema
    from referencing import Registry, Resource

    schemas = Path(__file__).resolve().parents[2] / "schemas"
    docs = {p.name: json.loads(p.read_text()) for p in schemas.glob("*-store.schema.json")}
    registry = Registry().with_resources((f"dcgen/{n}", Resource.from_contents(d)) for n, d in docs.items())
    validator = jsonschema.Draft202012Validator(docs["latent-store.schema.json"], registry=registry)
    validator.validate(LatentStore.open(debug_latents).meta)


def test_conditions_splits_and_previous_clips_are_copied(debug_city, debug_latents):
    latents = LatentStore.open(debug_latents)
    scenes = SceneStore.open(debug_city)
    got = latents.read(slice(None), ("clip_index", "command", "trajectory", "layout", "bev", "prev_index"))
    want = scenes.read(got["clip_index"], ("command", "trajectory", "layout", "bev"))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    manifest = scenes.manifest()
    assert latents.meta["splits"] == {"train": int((np.array(manifest.column("split").to_pylist()) == "train").sum()),
                                      "val": int((np.array(manifest.column("split").to_pylist()) == "val").sum())}
    starts = manifest.column("frame_start").to_numpy()
    prev = got["prev_index"]
    assert ((prev >= 0) == (starts > 0)).all() and latents.has_previous
    assert (starts[prev[prev >= 0]] == 0).all()


def test_training_batches_join_the_previous_latent(debug_latents, ray_local):
    from dcgen.data.ray_dataset import read_latents

    store = LatentStore.open(debug_latents)
    batch = next(latent_batches(debug_latents, "train", 64))
    assert set(batch) >= {"latent", "prev_latent", "has_prev", "command", "trajectory", "layout", "bev"}
    prev = store.read(batch["row"], ("prev_index",))["prev_index"]
    has = prev >= 0
    np.testing.assert_array_equal(batch["has_prev"], has)
    np.testing.assert_array_equal(batch["prev_latent"][has], store.read(prev[has], ("latent",))["latent"])
    assert not batch["prev_latent"][~has].any()
    rows = read_latents(debug_latents, "val").take_all()
    assert sorted(int(r["row"]) for r in rows) == store.rows("val").tolist()


def test_encode_refuses_an_existing_output(debug_city, debug_vae, debug_latents):
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        encode_store(debug_vae, debug_city, debug_latents)


def test_encode_refuses_a_store_of_another_grid(tmp_path, debug_vae):
    other = SceneStore.create(str(tmp_path / "small.zarr"), GRIDS["small"], source="test")
    with pytest.raises(ValueError, match=r"does not match the VAE"):
        encode_store(debug_vae, other.path, str(tmp_path / "out.zarr"))
    assert not (tmp_path / "out.zarr").exists()


def test_encode_refuses_a_corrupt_or_foreign_checkpoint(tmp_path, debug_city, debug_vae):
    bad = tmp_path / "vae"
    shutil.copytree(debug_vae, bad)
    (bad / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupted or unreadable checkpoint weights"):
        encode_store(str(bad), debug_city, str(tmp_path / "out.zarr"))
    with pytest.raises(ValueError, match="not a dcgen checkpoint"):
        encode_store(str(tmp_path), debug_city, str(tmp_path / "out.zarr"))
    assert not (tmp_path / "out.zarr").exists()


def test_incomplete_latent_store_is_refused(tmp_path, debug_latents):
    copy = tmp_path / "latents.zarr"
    shutil.copytree(debug_latents, copy)
    store = LatentStore.open(str(copy), "a")
    meta = dict(store.meta, complete=False)
    store._group.attrs["dcgen"] = meta
    with pytest.raises(ValueError, match="incomplete latent store"):
        LatentStore.open(str(copy))


def test_encode_cli_reports_errors_on_one_line(tmp_path, debug_city):
    result = CliRunner().invoke(app, ["encode", "--vae", str(tmp_path), "--data", debug_city, "--out",
                                      str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    assert "error:" in result.output and "not a dcgen checkpoint" in result.output


def test_encode_refuses_a_checkpoint_carrying_pickled_objects(tmp_path, debug_city, debug_vae):
    from debug_models import damaged_checkpoint

    bad = damaged_checkpoint(debug_vae, tmp_path / "vae", "pickled")
    result = CliRunner().invoke(app, ["encode", "--vae", bad, "--data", debug_city, "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2, result.output
    assert f"error: {bad}/state.pt: checkpoint carries pickled objects (debug_models.PickledNote); expected only " \
           "tensors and plain containers" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_encode_of_a_damaged_store_names_store_and_clips_and_keeps_the_earlier_latents(
        ray_local, tmp_path, debug_city, debug_vae, debug_latents):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(debug_city, damaged)
    shard = sorted(p for p in (damaged / "occupancy" / "c").rglob("*") if p.is_file())[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated: Blosc cannot decode it
    out = tmp_path / "latents.zarr"
    shutil.copytree(debug_latents, out)  # an earlier encode that --overwrite would replace
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    result = CliRunner().invoke(app, ["encode", "--vae", debug_vae, "--data", str(damaged), "--out", str(out),
                                      "--overwrite", "--batch-size", "4"])
    assert result.exit_code == 2, result.output
    # one error line, no Ray traceback (loggers that Ray bound to an earlier invoke's closed stream may complain)
    (line,) = [t for t in result.output.splitlines() if t.startswith("error:")]
    assert line.startswith(f"error: {damaged}: array 'occupancy', clips 0..") and "cannot be decoded" in line, line
    assert line.endswith(f"nothing was written at {out} (the latent store there is kept)"), line
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert LatentStore.open(str(out)).complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.zarr", "latents.zarr"]  # no half-built store left
