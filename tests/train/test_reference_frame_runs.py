"""A reference-frame VAE (``motion_frame.py``, the small preset's) end to end on the debug grid: Ray Train hands
every worker the clips' trajectories, ``dcgen eval recon`` and ``dcgen encode`` pass them on, the latent store's
latents decode like the VAE (along the trajectory they carry), and the generation pipeline renders a requested
trajectory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgen.data.latent_store import LatentStore
from dcgen.data.store import SceneStore
from dcgen.metrics.recon_eval import evaluate_reconstruction
from dcgen.models.loading import load_vae
from dcgen.models.rollout import RolloutLayout
from dcgen.train.runs import train_vae


@pytest.fixture(scope="module")
def reference_vae(ray_local, debug_city, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ref-vae")
    summary = train_vae(debug_city, "debug", out, frame="reference", epochs=1, report_every=1000)
    return summary["best"]


def clips(store_path: str, rows) -> tuple[torch.Tensor, torch.Tensor]:
    d = SceneStore.open(store_path).read(np.asarray(rows), ("occupancy", "trajectory"))
    return torch.from_numpy(d["occupancy"].astype(np.int64)), torch.from_numpy(d["trajectory"])


def test_ray_train_run_trains_a_reference_frame_vae_that_eval_recon_reads(reference_vae, debug_city):
    vae = load_vae(reference_vae).model
    assert vae.config.frame == "reference" and vae.needs_trajectory
    result = evaluate_reconstruction(reference_vae, debug_city, split="val", num_renders=0, batch_size=4)
    assert result["num_clips"] > 0 and 0.0 <= result["miou"] <= 1.0
    val = SceneStore.open(debug_city).indices("val")
    occ, traj = clips(debug_city, val)
    # decoded in the evaluation's batches of 4: a batch of another shape may run other kernels and flip a near-tie
    # voxel's class, and the exact count below checks the table's bookkeeping, not the kernels
    with torch.no_grad():
        pred = torch.cat([vae(occ[a:a + 4], sample=False, trajectory=traj[a:a + 4])[0].argmax(1)
                          for a in range(0, len(val), 4)])
    # the table counts the reconstructions decoded along each clip's own trajectory
    confusion = np.asarray(result["confusion"])
    mask = torch.from_numpy(SceneStore.open(debug_city).read(val, ("mask",))["mask"])
    assert confusion.sum() == int(mask.sum())
    assert np.trace(confusion) == int(((pred == occ) & mask).sum())


def test_encode_writes_latents_that_carry_the_trajectory_and_decode_like_the_vae(reference_vae, debug_city,
                                                                                   tmp_path):
    from dcgen.train.encode import encode_store

    out = tmp_path / "latents.zarr"
    encode_store(reference_vae, debug_city, str(out), batch_size=4)
    latents = LatentStore.open(str(out))
    vae = load_vae(reference_vae).model
    rollout = RolloutLayout(vae.dims, latents.patch)
    rows = np.array([0, 3, latents.num_clips - 1])
    stored = torch.from_numpy(latents.read(rows, ("latent",))["latent"])
    occ, traj = clips(debug_city, latents.read(rows, ("clip_index",))["clip_index"])
    planes = rollout.unpack(stored)
    assert latents.meta["frame"] == vae.frame_info() and latents.meta["frame"]["frame"] == "reference"
    assert latents.meta["frame"]["trajectory_channels"] == list(range(vae.slot.first, vae.dims.channels))
    assert torch.allclose(vae.trajectory(planes), traj, atol=1e-5)
    with torch.no_grad():
        logits_ref, _, _ = vae(occ, sample=False, trajectory=traj)
        logits = vae.decode(planes)
    assert torch.allclose(logits, logits_ref, atol=1e-4)


def test_pipeline_renders_a_requested_trajectory(reference_vae, debug_dit, debug_city):
    from dcgen.data.grid import GRIDS
    from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.models.loading import load_dit

    d = load_dit(debug_dit)
    schedule = NoiseSchedule.linear(ScheduleConfig.from_dict(d.meta["schedule"]))
    vae = load_vae(reference_vae).model
    pipe = GenerationPipeline(vae, d.model, GRIDS["debug"], schedule, micro_batch=2)
    _, traj = clips(debug_city, [1])
    rollout = pipe.sample_latents([SceneRequest(), SceneRequest()], [0, 1], steps=2)
    carried = pipe.decode(rollout)
    given = pipe.decode(rollout, [traj[0].numpy(), None])
    assert torch.equal(torch.from_numpy(given[1]), torch.from_numpy(carried[1]))  # no trajectory: the latent's own
    planes = pipe.rollout.unpack(pipe.norm.denormalize(rollout, pipe.valid_SS) if pipe.norm else rollout)
    with torch.no_grad():
        want_logits = vae.decode(vae.with_trajectory({k: v[:1] for k, v in planes.items()}, traj))[0]
    # the pipeline decodes in micro-batches of 2, this reference alone: logits agree to rounding, so the classes
    # must agree wherever the reference decides by a clear margin (1e-4, far above float32 rounding of these logits)
    top2 = want_logits.topk(2, dim=0).values
    decided = (top2[0] - top2[1]).numpy() > 1e-4
    assert decided.mean() > 0.99
    assert np.array_equal(given[0][decided], want_logits.argmax(0).numpy().astype(np.uint8)[decided])


def test_pipeline_projects_the_generated_ego_motion_and_changes_nothing_else(reference_vae, debug_dit):
    from dataclasses import replace

    from dcgen.data.grid import GRIDS
    from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.models.loading import load_dit
    from dcgen.models.motion_frame import smooth_trajectory

    d = load_dit(debug_dit)
    schedule = NoiseSchedule.linear(ScheduleConfig.from_dict(d.meta["schedule"]))
    pipe = GenerationPipeline(load_vae(reference_vae).model, d.model, GRIDS["debug"], schedule, micro_batch=2)
    reqs, seeds = [SceneRequest(), SceneRequest()], [0, 1]
    smooth = pipe.sample_latents(reqs, seeds, steps=2)
    pipe.defaults = replace(pipe.defaults, trajectory_degree=0)
    raw = pipe.sample_latents(reqs, seeds, steps=2)
    slot = pipe._slot_cells().expand_as(raw)
    assert torch.equal(smooth[~slot], raw[~slot])  # the scene's cells are the sampler's, bit for bit

    def carried(rollout):
        return pipe.vae.trajectory(pipe.rollout.unpack(pipe.norm.denormalize(rollout, pipe.valid_SS)))

    want = smooth_trajectory(carried(raw))
    assert torch.allclose(carried(smooth), want, atol=1e-4)
    assert not torch.allclose(carried(raw), want, atol=1e-4)  # the debug DiT's own trajectory is not smooth
