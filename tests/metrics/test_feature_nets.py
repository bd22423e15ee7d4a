"""Metric feature networks (SPEC §4): the 2D render CNN, the 3D voxel network, the InceptionV3 shape and its
weights loader, the proxy task, the corruptions, and a features training run on a tiny debug city."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from dcgen import checkpoint
from dcgen.data.classes import CLASS_IDS
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import generate_block
from dcgen.metrics import corruptions
from dcgen.metrics.feature_nets import FeatureNets, FeatureNetsConfig, load_feature_nets
from dcgen.metrics.inception import InceptionV3, load_inception_weights
from dcgen.metrics.proxy_task import ProxyTask, fit_density_edges, vehicle_share
from dcgen.metrics.render_net import RenderNet, RenderNetConfig
from dcgen.metrics.voxel_net import VoxelNet, VoxelNetConfig, class_shares, coarse_class_map
from dcgen.train.context import LocalContext
from dcgen.train.features_loop import FeaturesTrainConfig, lr_factor, train_features

DEBUG = GRIDS["debug"]
ROAD, VEHICLE, BUILDING = CLASS_IDS["road"], CLASS_IDS["vehicle"], CLASS_IDS["building"]
TINY_IMAGE = {"width": 8, "aux_size": 4}
TINY_VOXEL = {"widths": (8, 16), "bottleneck_dim": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_clips(n: int, grid=DEBUG, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, grid.num_classes, (n, *grid.shape)).astype(np.uint8)


def tiny_nets_config(proxy: ProxyTask = ProxyTask(), render_size: int = 32) -> FeatureNetsConfig:
    return FeatureNetsConfig.for_grid(DEBUG, proxy, render_size=render_size, image=TINY_IMAGE, voxel=TINY_VOXEL)


# ---- 2D network ----------------------------------------------------------------------------------------------

def test_render_net_forward_backward_and_batch_independence():
    net = RenderNet(RenderNetConfig(9, **TINY_IMAGE)).eval()
    images = torch.rand(3, 3, 48, 48) * 2 - 1
    feats, logits, aux = net(images)
    assert feats.shape == (3, 256) and logits.shape == (3, 9) and aux.shape == (3, 3, 4, 4)
    assert (feats >= -0.2785).all()  # means of SiLU outputs and standard deviations (identity calibration)
    h = net.stem(images)
    torch.testing.assert_close(feats[:, :8], h.mean((2, 3)))  # the stem's channel means come first
    torch.testing.assert_close(feats[:, 8:16], h.std((2, 3), correction=0), atol=1e-4, rtol=1e-4)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        alone = net.features(images[1:2])
    torch.testing.assert_close(alone, feats[1:2].detach(), atol=1e-5, rtol=1e-5)


def test_render_net_rejects_bad_input_and_config():
    net = RenderNet(RenderNetConfig(4, **TINY_IMAGE))
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\] with H, W >= 32"):
        net.features(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="width must be a positive multiple of groups=8, got 12"):
        RenderNetConfig(4, width=12)
    with pytest.raises(ValueError, match="num_outputs must be >= 2"):
        RenderNetConfig(1)


# ---- 3D network ----------------------------------------------------------------------------------------------

def test_class_shares_match_a_one_hot_average_pool():
    occ = torch.from_numpy(random_clips(2).astype(np.int64))
    cell = (2, 4, 4, 2)
    got = class_shares(occ, DEBUG.num_classes, cell)
    onehot = torch.nn.functional.one_hot(occ, DEBUG.num_classes).double()  # [B, T, X, Y, Z, K]
    b, t, x, y, z, k = onehot.shape
    ref = onehot.view(b, t // 2, 2, x // 4, 4, y // 4, 4, z // 2, 2, k).mean(dim=(2, 4, 6, 8)).permute(0, 5, 1, 2, 3, 4)
    torch.testing.assert_close(got.double(), ref)
    coarse = coarse_class_map(occ, DEBUG.num_classes, 2)
    assert coarse.shape == (2, DEBUG.num_classes, 2, 4, 4)
    torch.testing.assert_close(coarse.sum(1), torch.ones(2, 2, 4, 4))


def test_voxel_net_forward_backward_shapes_and_batch_independence():
    cfg = VoxelNetConfig.for_grid(DEBUG.num_frames, DEBUG.size, DEBUG.num_classes, 9, **TINY_VOXEL)
    assert cfg.pool == (1, 1, 1, 1) and cfg.slices == (4, 8, 8, 2)
    net = VoxelNet(cfg).eval()
    occ = torch.from_numpy(random_clips(3))
    feats, logits, aux = net(occ)
    assert feats.shape == (3, 40) and logits.shape == (3, 9) and aux.shape == (3, DEBUG.num_classes, 4, 4, 4)
    stem = net.stem(occ)  # [B, C0, T', X', Y', Z']: its channel means over cells and slices follow the bottleneck
    torch.testing.assert_close(feats[:, 8:16], stem.mean(dim=(2, 3, 4, 5)), atol=1e-5, rtol=1e-5)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        torch.testing.assert_close(net.features(occ[2:3]), feats[2:3].detach(), atol=1e-5, rtol=1e-5)


def test_voxel_net_defaults_for_every_preset_and_bad_configs():
    for name, g in GRIDS.items():
        cfg = VoxelNetConfig.for_grid(g.num_frames, g.size, g.num_classes, 24)
        assert cfg.slices[0] == 4 and cfg.slices[1:3] == (8, 8), name
    with pytest.raises(ValueError, match=r"pool \[1, 3, 1, 1\] must divide the clip shape"):
        VoxelNetConfig(4, (32, 32, 4), 11, 24, pool=(1, 3, 1, 1), patch=(1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"patch \[1, 5, 4, 2\] must divide the pooled clip shape"):
        VoxelNetConfig(4, (32, 32, 4), 11, 24, pool=(1, 1, 1, 1), patch=(1, 5, 4, 2))
    net = VoxelNet(VoxelNetConfig.for_grid(4, (32, 32, 4), 11, 24, **TINY_VOXEL))
    with pytest.raises(ValueError, match=r"VoxelNet expects clips \[B, 4, 32, 32, 4\], got \[1, 4, 16, 32, 4\]"):
        net.features(torch.zeros(1, 4, 16, 32, 4, dtype=torch.long))


def test_feature_calibration_gives_every_block_the_same_variance():
    from dcgen.metrics.calibration import FeatureCalibration

    spread = torch.tensor([1.0, 2.0, 0.0, 10.0], dtype=torch.float64)
    raw = torch.randn(50, 4, dtype=torch.float64) * spread + 5.0
    cal = FeatureCalibration(4, blocks=(3, 1))
    torch.testing.assert_close(cal(raw.float()), raw.float())  # identity until set
    cal.set_from_moments(raw.sum(0), (raw * raw).sum(0), 50)
    out = cal(raw.float()).double()
    var = out.var(0)
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(var[:3].sum()) == pytest.approx(2.0, rel=1e-4) and float(var[3]) == pytest.approx(2.0, rel=1e-4)
    assert float(var.mean()) == pytest.approx(1.0, rel=1e-4)
    assert float(var[1] / var[0]) == pytest.approx(float(raw.var(0)[1] / raw.var(0)[0]), rel=1e-4)  # one factor
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        cal.set_from_moments(raw[0], raw[0] ** 2, 1)
    with pytest.raises(ValueError, match=r"calibration blocks \[3, 2\] must be positive sizes summing to 4"):
        FeatureCalibration(4, blocks=(3, 2))


# ---- InceptionV3 -----------------------------------------------------------------------------------------------

def test_inception_v3_shape_and_feature_dim():
    net = InceptionV3(num_classes=24).eval()
    assert sum(p.numel() for p in net.parameters()) > 20_000_000
    with torch.no_grad():
        feats, logits, aux = net(torch.zeros(1, 3, 75, 75))
    assert feats.shape == (1, 2048) and logits.shape == (1, 24) and aux is None
    with pytest.raises(ValueError, match="at least 75 pixels"):
        net.features(torch.zeros(1, 3, 64, 64))


def test_inception_weights_loader_round_trip_fid_variant(tmp_path):
    """A pytorch-fid-style file (1008 classes, wrapped, DDP prefix) loads into the FID variant, bit-exact."""
    torch.manual_seed(0)
    source = InceptionV3(num_classes=1008).eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "fid_inception.pth")
    model, info = load_inception_weights(tmp_path / "fid_inception.pth")
    assert info["num_classes"] == 1008 and info["fid_variant"] and len(info["sha256"]) == 64
    assert model.resize_to == 299 and not model.training
    for k, v in source.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def test_inception_weights_loader_rejects_wrong_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_inception_weights(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="not a torch weights file loadable with weights_only=True"):
        load_inception_weights(tmp_path / "garbage.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state_dict of tensors"):
        load_inception_weights(tmp_path / "list.pth")
    torch.save(RenderNet(RenderNetConfig(4, **TINY_IMAGE)).state_dict(), tmp_path / "other_net.pth")
    with pytest.raises(ValueError, match=r"'fc.weight' is missing; expected \[classes, 2048\]"):
        load_inception_weights(tmp_path / "other_net.pth")
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000),
                "Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"not an InceptionV3 state_dict: tensors \d+ missing .*1 of another shape"):
        load_inception_weights(tmp_path / "partial.pth")


# ---- proxy task ---------------------------------------------------------------------------------------------------

def street(layout_x: int | None, vehicles: int) -> np.ndarray:
    """A debug clip: road along X through the centre, optionally a crossing road at row ``layout_x``."""
    occ = np.zeros(DEBUG.shape, np.uint8)
    occ[..., 0] = BUILDING
    occ[:, :, 12:20, 0] = ROAD
    if layout_x is not None:
        occ[:, layout_x:layout_x + 6, :, 0] = ROAD
    occ[:, 2:2 + vehicles, 14, 1] = VEHICLE
    return occ


def test_proxy_labels_combine_command_density_and_layout():
    task = ProxyTask(density_edges=(0.001, 0.002))
    clips = np.stack([street(14, 0), street(None, 0), street(None, 10), street(30, 20)])
    assert task.layouts(clips, DEBUG.voxel_size[:2]).tolist() == [1, 0, 0, 0]  # row 30 is 23 m ahead
    shares = vehicle_share(clips)
    assert task.density_bins(clips).tolist() == [int(np.searchsorted([0.001, 0.002], s, "right")) for s in shares]
    labels = task.labels(clips, np.array([0, 1, 2, 3]), DEBUG.voxel_size[:2])
    assert labels.tolist() == [(c * 3 + d) * 2 + lay for c, d, lay in zip([0, 1, 2, 3], task.density_bins(clips),
                                                                           [1, 0, 0, 0])]
    names = task.class_names()
    assert len(names) == task.num_classes == 24 and names[int(labels[0])] == "static/sparse/intersection"
    mirrored = task.mirror_labels(labels)
    assert [names[i].split("/")[0] for i in mirrored] == ["static", "forward", "right", "left"]
    np.testing.assert_array_equal(task.mirror_labels(mirrored), labels)


def test_factorised_classifier_joint_probabilities_loss_and_prediction():
    task = ProxyTask()
    assert task.part_sizes == (4, 3, 2) and task.num_logits == 9
    logits = torch.randn(5, 9, dtype=torch.float64)
    joint = task.joint_log_probs(logits).exp()
    assert joint.shape == (5, 24)
    torch.testing.assert_close(joint.sum(1), torch.ones(5, dtype=torch.float64))
    pc, pd, pl = (torch.softmax(p, 1) for p in torch.split(logits, (4, 3, 2), 1))
    c, d, lay = 2, 1, 0
    torch.testing.assert_close(joint[:, (c * 3 + d) * 2 + lay], pc[:, c] * pd[:, d] * pl[:, lay])
    np.testing.assert_array_equal(task.predict(logits).numpy(), joint.argmax(1).numpy())
    labels = torch.tensor([0, 7, 13, 23, 16])
    nll = -task.joint_log_probs(logits)[torch.arange(5), labels].mean()
    torch.testing.assert_close(task.loss(logits, labels).double(), nll, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits have 24 outputs; expected 9 \(command 4 \+ density 3"):
        task.loss(torch.zeros(2, 24), torch.zeros(2, dtype=torch.long))


def test_proxy_task_errors_and_density_fit():
    with pytest.raises(ValueError, match="strictly increasing"):
        ProxyTask(density_edges=(0.2, 0.1))
    task = ProxyTask()
    with pytest.raises(ValueError, match=r"commands must be in 0..3, got values \[7\]"):
        task.labels(street(None, 0)[None], np.array([7]), DEBUG.voxel_size[:2])
    with pytest.raises(ValueError, match="2 commands for 1 clips"):
        task.labels(street(None, 0)[None], np.array([1, 2]), DEBUG.voxel_size[:2])
    with pytest.raises(ValueError, match="needs at least 3 training clips, got 2"):
        fit_density_edges([1, 2], 100)
    edges = fit_density_edges([0, 0, 0, 0, 30, 60], 100)  # ties at zero: edges nudged apart, still increasing
    assert len(edges) == 2 and edges[0] < edges[1]
    assert ProxyTask.from_dict(ProxyTask(density_edges=edges).to_dict()).density_edges == edges


# ---- corruptions ----------------------------------------------------------------------------------------------------

def test_corruptions_change_what_they_say():
    clips = np.stack([street(14, 6), street(None, 3)])
    noisy = corruptions.class_noise(clips, 0.5, DEBUG.num_classes, seed=1)
    changed = noisy != clips
    assert changed.any() and not changed[clips == 0].any() and (noisy[changed] != 0).all()
    assert 0.4 < changed[clips != 0].mean() < 0.6
    np.testing.assert_array_equal(corruptions.class_noise(clips[1:], 0.5, 11, seed=1, first_index=1), noisy[1:])
    moved = corruptions.shift(clips, 3, -2)
    np.testing.assert_array_equal(moved[:, :, 3:, :-2], clips[:, :, :-3, 2:])
    assert (moved[:, :, :3] == 0).all() and (moved[:, :, :, -2:] == 0).all()
    emptied = corruptions.empty(clips, 1.0)
    assert not emptied.any() and clips.any()
    with pytest.raises(ValueError, match="moves the scene out of the 32 × 32 grid"):
        corruptions.shift(clips, 32, 0)
    with pytest.raises(ValueError, match=r"class noise probability must be in \[0, 1\], got 2"):
        corruptions.class_noise(clips, 2, 11)


# ---- the bundle and its training loop -------------------------------------------------------------------------------

def test_feature_nets_check_clips_errors():
    nets = FeatureNets(tiny_nets_config())
    with pytest.raises(ValueError, match=r"the feature networks read clips \[N, 4, 32, 32, 4\]"):
        nets.check_clips(np.zeros((2, 4, 32, 32, 8), np.uint8))
    with pytest.raises(ValueError, match="clips hold class id 12; the feature networks read ids 0..10"):
        nets.check_clips(np.full((1, *DEBUG.shape), 12, np.uint8))
    with pytest.raises(ValueError, match="image network 'resnet' is not one of cnn, inception"):
        FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), image_kind="resnet")
    with pytest.raises(ValueError, match=r"render_frames \[0, 9\] must be a non-empty list of frame indices in 0..3"):
        FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), render_frames=(0, 9))
    with pytest.raises(ValueError, match="render_size must be an integer >= 32 pixels, got 16"):
        FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), render_size=16)


def test_lr_factor_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100) == pytest.approx(0.2)
    assert lr_factor(4, 100) == pytest.approx(1.0)
    assert lr_factor(52, 100) == pytest.approx(0.5, abs=0.02)
    assert lr_factor(100, 100) == pytest.approx(0.0, abs=1e-9)


def city_store(path, num_clips: int = 12, val=(3, 7, 10, 11)) -> str:
    store = SceneStore.create(str(path), DEBUG, source="test-city", with_mask=True, capacity=num_clips)
    batch, rows = generate_block(DEBUG, 0, 0, num_clips, 0.0, store.array_names)
    for row in rows:
        row["split"] = "val" if row["index"] in val else "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


def test_features_loop_trains_checkpoints_records_provenance_and_resumes(tmp_path):
    store = city_store(tmp_path / "city.zarr")
    cfg = tiny_nets_config()
    out = tmp_path / "run"
    run = asdict(FeaturesTrainConfig(nets=cfg.to_dict(), steps_per_epoch=2, epochs=1, batch_size=4, report_every=1,
                                     out_dir=str(out), extra={"trained_on": {"data": store, "train_clips": 8}}))
    ctx = LocalContext(out_dir=out, store_path=store, arrays=("occupancy", "command"))
    first = train_features(ctx, run)
    assert first["epoch"] == 0 and first["step"] == 2 and 0.0 <= first["val_voxel_acc"] <= 1.0
    meta = checkpoint.read_meta(out / "best", kind="features")
    assert meta["trained_on"]["data"] == store and meta["accuracy"]["val_clips"] == 4
    assert len(meta["proxy_task"]["class_names"]) == 24 and sum(meta["proxy_task"]["val_label_counts"]) == 4
    loaded = load_feature_nets(out / "best")
    assert loaded.nets.dims == (256, 40) and loaded.checkpoint_id.startswith("features-2-")
    # the calibration measured at validation makes the val clips' metric features zero-mean, unit variance on average
    val_idx = SceneStore.open(store).indices("val")
    val = SceneStore.open(store).read(val_idx, ("occupancy",))["occupancy"]
    with torch.no_grad():
        f3 = loaded.nets.voxel.features(torch.from_numpy(val)).double()
    torch.testing.assert_close(f3.mean(0), torch.zeros(40, dtype=torch.float64), atol=1e-4, rtol=0)
    assert float(f3.var(0).mean()) == pytest.approx(1.0, rel=1e-3)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train_image_ce" in r for r in rows) and any("val_score" in r for r in rows)
    # a second run with more epochs resumes from the context's latest checkpoint
    second = train_features(ctx, {**run, "epochs": 2})
    assert second["epoch"] == 1 and second["step"] == 4
    with pytest.raises(ValueError, match="checkpoint is of other feature networks than this run"):
        other = tiny_nets_config(render_size=40)
        train_features(ctx, {**run, "nets": other.to_dict(), "epochs": 3})


def test_inception_shaped_image_network_trains_a_step_and_extracts():
    from dcgen.metrics.extract import extract_features
    from dcgen.train.features_loop import losses

    nets = FeatureNets(FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), image_kind="inception", render_size=75,
                                                  voxel=TINY_VOXEL))
    occ = random_clips(1)
    parts = losses(nets, nets, occ, np.array([3]), 0, torch.device("cpu"), 1.0, False)
    assert "image_ce" in parts and "image_aux" not in parts  # InceptionV3 has no auxiliary image head
    parts["total"].backward()
    assert nets.image.Mixed_7c.branch_pool.conv.weight.grad is not None and nets.image.fc.out_features == 9
    f = extract_features(nets.eval(), occ)
    assert f.feat2d_MD.shape == (6, 2048) and f.probs2d_MK.shape == (6, 24)
