"""The reference frame (``motion_frame.py``, the small preset's): clips resampled with their trajectory so the
static world stands still, logits resampled back into every frame, the trajectory kept inside the latent, and the
VAE built on it trains, refuses a missing or malformed trajectory, and leaves the slot out of the KL."""

from __future__ import annotations

import math

import pytest
import torch

from dcgen.data.grid import PLANE_NAMES
from dcgen.models.motion_frame import TRAJECTORY_SCALE, TrajectorySlot, from_reference, reference_index, to_reference
from dcgen.models.vae import HexPlaneVAE
from dcgen.presets import PRESETS, get_preset
from dcgen.train.vae_loop import flip_batch_y
from dcgen.train.vae_losses import kl_divergence, vae_loss

DEBUG = get_preset("debug").vae.replace(projection="column", column_width=8, frame="reference")
V = DEBUG.voxel_xy  # (1.6, 1.6) metres
T, X, Y, Z = DEBUG.shape
K = DEBUG.num_classes


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_hot_logits(occ_BTXYZ: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(occ_BTXYZ.clamp(max=K - 1), K).permute(0, 5, 1, 2, 3, 4).float()


def test_a_still_ego_is_its_own_reference_frame():
    occ = torch.randint(0, K, (2, T, X, Y, Z))
    still = torch.zeros(2, T, 3)
    assert torch.equal(to_reference(occ, still, V, unseen=K), occ)
    assert torch.equal(from_reference(one_hot_logits(occ), still, V).argmax(1), occ)


def test_a_pole_the_ego_drives_past_stands_still_in_the_reference_frame():
    """The ego drives forward one voxel per frame past a pole; in its own frames the pole slides back one voxel per
    frame, in the reference frame (the middle frame's) it stays where that frame saw it."""
    traj = torch.zeros(1, T, 3)
    traj[0, :, 0] = torch.arange(T) * V[0]
    occ = torch.zeros(1, T, X, Y, Z, dtype=torch.long)
    pole_x = 20
    for t in range(T):
        occ[0, t, pole_x - t, 7, :] = 5
    ref = to_reference(occ, traj, V, unseen=K)
    m = reference_index(T)
    seen = ref != K
    for t in range(T):
        assert torch.equal(ref[0, t, pole_x - m, 7], torch.full((Z,), 5)), t
        assert int((ref[0, t] == 5).sum()) == Z, t
    # frame 0 has not yet seen the reference frame's far rows, the last frame no longer sees its near ones
    assert seen[0, 0, :X - m].all() and not seen[0, 0, X - m:].any()
    assert not seen[0, -1, :T - 1 - m].any() and seen[0, -1, T - 1 - m:].all()
    back = from_reference(one_hot_logits(ref), traj, V).argmax(1)
    assert torch.equal(back[occ == 5], occ[occ == 5])


def test_a_quarter_turn_maps_voxel_centres_onto_voxel_centres():
    """The reference frame turned a quarter left of frame 0: a reference point (qx, qy) is at (−qy, qx) in frame 0."""
    traj = torch.zeros(1, T, 3)
    m = reference_index(T)
    traj[0, m, 2] = math.pi / 2  # the reference frame (and the frames after it) turned left
    traj[0, m + 1:, 2] = math.pi / 2
    occ = torch.randint(0, K, (1, T, X, Y, Z))
    ref = to_reference(occ, traj, V, unseen=K)
    # reference voxel (i, j) has centre q; frame 0 sees it at (−q_y, q_x) = voxel (Y − 1 − j, i)
    i, j = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
    assert torch.equal(ref[0, 0], occ[0, 0, Y - 1 - j, i])
    assert torch.equal(ref[0, m], occ[0, m])
    back = from_reference(one_hot_logits(ref), traj, V).argmax(1)
    assert torch.equal(back, occ)


def test_the_trajectory_slot_round_trips_and_is_left_out_of_the_kl():
    slot = TrajectorySlot(DEBUG.dims, T)
    assert slot.channels == math.ceil(3 * T / (DEBUG.dims.t * DEBUG.dims.z))
    traj = torch.randn(2, T, 3)
    tz = torch.randn(2, DEBUG.dims.channels, DEBUG.dims.t, DEBUG.dims.z)
    written = slot.write(tz, traj)
    assert torch.allclose(slot.read(written), traj, atol=1e-6)
    assert torch.equal(written[:, :slot.first], tz[:, :slot.first])
    assert written[0, slot.first].flatten()[0] == pytest.approx(traj[0, 0, 0] / TRAJECTORY_SCALE[0])
    assert not slot.clear(written)[:, slot.first:].any()
    keep = slot.latent_mask(tz)
    assert keep.sum() == slot.first and not keep[slot.first:].any()
    with pytest.raises(ValueError, match="needs 38 of the tz plane's 8 channels"):
        TrajectorySlot(DEBUG.replace(latent_channels=8).dims, 50)


def moving_clip(batch: int = 1):
    traj = torch.zeros(batch, T, 3)
    traj[:, :, 0] = torch.arange(T) * V[0] * 1.5
    traj[:, :, 2] = torch.arange(T) * 0.1
    occ = torch.zeros(batch, T, X, Y, Z, dtype=torch.long)
    occ[..., 0] = 6
    occ[:, :, 10:14, 4:9, 1:3] = 5
    return occ, traj


def test_reference_frame_vae_trains_and_carries_its_trajectory():
    torch.manual_seed(0)
    model = HexPlaneVAE(DEBUG)
    occ, traj = moving_clip(2)
    logits, mu, logvar = model(occ, trajectory=traj)
    assert logits.shape == (2, K, *DEBUG.shape)
    assert torch.allclose(model.trajectory(mu), traj, atol=1e-6)
    masks = model.latent_masks(mu)
    loss, parts = vae_loss(logits, occ, mu, logvar, torch.ones(K), latent_masks=masks)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # the slot is no Gaussian: the KL over the posterior channels only, as if the slot were absent
    first = model.slot.first
    plain = {n: mu[n] for n in PLANE_NAMES}, {n: logvar[n] for n in PLANE_NAMES}
    plain[0]["tz"], plain[1]["tz"] = mu["tz"][:, :first], logvar["tz"][:, :first]
    assert float(parts["kl"]) == pytest.approx(float(kl_divergence(*plain).detach()), rel=1e-5)
    # decode renders along the latent's trajectory: another one moves the scene
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(occ, traj)
        other = model.with_trajectory(mu, torch.zeros_like(traj))
        assert torch.equal(model.trajectory(other), torch.zeros_like(traj))
        assert not torch.allclose(model.decode(mu), model.decode(other))


def test_reference_frame_vae_refuses_a_missing_or_malformed_trajectory():
    model = HexPlaneVAE(DEBUG)
    occ, traj = moving_clip()
    with pytest.raises(ValueError, match=r"needs each clip's trajectory \[B, T, 3\]; none was given"):
        model.encode(occ)
    with pytest.raises(ValueError, match=r"trajectory shape \(1, 4, 2\), expected \(1, 4, 3\)"):
        model.encode(occ, traj[..., :2])
    bad = traj.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model.encode(occ, bad)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        model.encode(occ, traj.tolist())
    with pytest.raises(ValueError, match="frame='world', expected one of ego, reference"):
        DEBUG.replace(frame="world")
    with pytest.raises(ValueError, match="voxel_xy=.*expected two positive"):
        DEBUG.replace(voxel_xy=(0.4, 0.0))


def test_the_cnn_encoder_works_in_the_reference_frame_too():
    torch.manual_seed(0)
    model = HexPlaneVAE(DEBUG.replace(projection="projection"))
    occ, traj = moving_clip()
    logits, mu, logvar = model(occ, trajectory=traj)
    loss, _ = vae_loss(logits, occ, mu, logvar, torch.ones(K), latent_masks=model.latent_masks(mu))
    loss.backward()
    assert torch.isfinite(loss)


def test_ego_frame_vae_ignores_trajectories():
    model = HexPlaneVAE(DEBUG.replace(frame="ego")).eval()
    occ, traj = moving_clip()
    with torch.no_grad():
        mu, _ = model.encode(occ)
        assert not model.needs_trajectory and model.latent_masks(mu) is None and model.trajectory(mu) is None
        assert torch.equal(model.encode(occ, traj)[0]["tz"], mu["tz"])


def test_flipping_a_batch_mirrors_its_trajectory():
    occ, traj = moving_clip(2)
    traj[:, :, 1] = 0.5
    flipped = flip_batch_y({"occupancy": occ, "trajectory": traj}, torch.tensor([True, False]))
    assert torch.equal(flipped["trajectory"][0], traj[0] * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(flipped["trajectory"][1], traj[1])
    assert torch.equal(flipped["occupancy"][0], occ[0].flip(2))


def test_the_small_preset_works_in_the_reference_frame_with_its_grids_voxels():
    from dcgen.data.grid import GRIDS

    assert get_preset("small").vae.frame == "reference"
    assert all(get_preset(p).vae.frame == "ego" for p in ("debug", "carlasc", "occ3d"))
    assert all(get_preset(p).vae.voxel_xy == GRIDS[p].voxel_size[:2] for p in PRESETS)


# ---- the ego-motion prior of generated clips ----------------------------------------------------------------

def test_smooth_trajectory_keeps_smooth_motion_and_removes_jitter():
    from dcgen.models.motion_frame import smooth_trajectory

    t = torch.linspace(0, 1, 16, dtype=torch.float64)
    # a cubic in t (constant jerk): inside the family, kept (to float rounding)
    smooth_BT3 = torch.stack([6 * t + 2 * t ** 2 - t ** 3, -1.5 * t ** 2, 0.4 * t + 0.2 * t ** 3], -1)[None].float()
    assert torch.allclose(smooth_trajectory(smooth_BT3), smooth_BT3, atol=1e-5)
    # frame-to-frame jitter of a metre, the DiT's kind of error: taken out, the motion stays
    jitter_BT3 = torch.randn(1, 16, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 1.0, 0.1])
    jitter_BT3[:, 0] = 0  # poses are given in frame 0: its own is the origin
    out_BT3 = smooth_trajectory(smooth_BT3 + jitter_BT3)
    second_diff = (out_BT3.diff(n=2, dim=1).abs().mean() / (smooth_BT3 + jitter_BT3).diff(n=2, dim=1).abs().mean())
    assert second_diff < 0.05
    assert (out_BT3 - smooth_BT3).norm() < 0.5 * jitter_BT3.norm()
    assert torch.equal(out_BT3[:, 0], torch.zeros(1, 3))  # frame 0 is the origin the poses are given in
    assert torch.allclose(smooth_trajectory(out_BT3), out_BT3, atol=1e-5)  # a projection
    assert torch.allclose(smooth_trajectory(smooth_BT3 + jitter_BT3, degree=15), smooth_BT3 + jitter_BT3,
                          atol=1e-4)  # with a degree per frame, nothing is left to remove


def test_smooth_trajectory_refuses_a_degree_below_one():
    from dcgen.models.motion_frame import smooth_trajectory

    with pytest.raises(ValueError, match="trajectory degree must be >= 1"):
        smooth_trajectory(torch.zeros(1, 16, 3), degree=0)
