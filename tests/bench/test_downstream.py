"""The downstream benchmark: its controls tell a leak and a shuffled target apart, runs repeat bit for bit, it runs
on Ray Train and reports a collapsed store, it scores on an evaluation store of its own or on the first N evaluation
clips, a generator that trained on the evaluation clips is refused, and bad input stops it before anything is
trained or written."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from debug_models import write_city_store
from PIL import Image

from dcgen.bench.downstream import plan_runs, position_prior, run_downstream
from dcgen.bench.downstream_checks import checksums, overlap_report, ungated_pool, whole_store_pool
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import generate_clip
from dcgen.models.ssc_net import ssc_preset
from dcgen.train.context import LocalContext
from dcgen.train.ssc_loop import (MixedBatchOrder, SSCTrainConfig, augment, class_weights_of, num_transforms,
                                  read_result, train_ssc_runs)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = GRIDS["debug"]
SYNTH_CITY = {"generator": "dcgen.data.synth_city", "seed": 7}  # a procedural generator: no training data


def write_store(path, clips: list[dict], *, provenance: dict | None, rows: list[dict] | None = None,
                grid=G) -> str:
    """A store of ``clips`` (``generate_clip`` dicts) with ``provenance``; no observed mask, like generated stores."""
    store = SceneStore.create(str(path), grid, source="test-generator", attrs=provenance, with_mask=False)
    if clips:
        keys = [k for k in clips[0] if k != "mask"]
        store.append({k: np.stack([c[k] for c in clips]) for k in keys},
                     rows or [{"scene": f"g{i}", "split": "train"} for i in range(len(clips))])
    store.finalize()
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real debug city (12 train clips, 4 val), a held-out city of another seed (6 clips, all in its 'train'
    split), a procedural stand-in for generated data, a collapsed store."""
    root = tmp_path_factory.mktemp("downstream")
    real = write_city_store(root / "real.zarr", num_scenes=8, val_every=3)
    heldout = write_city_store(root / "heldout.zarr", num_scenes=3, seed=1, val_every=100)
    procedural = write_store(root / "procedural.zarr", [generate_clip(G, 7, i) for i in range(12)],
                             provenance=SYNTH_CITY)
    one = generate_clip(G, 8, 0)
    collapsed = write_store(root / "collapsed.zarr", [one] * 8, provenance={"generator": "test: one scene repeated"})
    return {"root": root, "real": real, "heldout": heldout, "procedural": procedural, "collapsed": collapsed}


def val_clips(store: SceneStore) -> list[tuple[str, int]]:
    """The evaluation clips of ``store`` as ``plan_runs`` takes them: its val split, ``(path, index)`` pairs."""
    return [(store.path, int(i)) for i in store.indices("val")]


def sweep_config(runs, out_dir, steps: int, batch_size: int) -> dict:
    return asdict(SSCTrainConfig(model=ssc_preset("debug").to_dict(), grid=G.to_dict(),
                                 runs=tuple(asdict(r) for r in runs), steps=steps, batch_size=batch_size,
                                 out_dir=str(out_dir)))


def eval_context(real: str) -> LocalContext:
    """The evaluation split as ``read_scenes`` hands it to a worker: batches with an ``index`` column."""
    store = SceneStore.open(real)

    def batches():
        idx = store.indices("val")
        yield {**store.read(idx, ("occupancy", "mask")), "index": idx}

    return LocalContext(splits={"eval": batches})


# ---- the harness can tell --------------------------------------------------------------------------------------

def test_leak_scores_far_above_real_and_shuffled_targets_score_near_chance(stores, tmp_path):
    real = SceneStore.open(stores["real"])
    runs = plan_runs(real, "train", val_clips(real), {}, real_counts=(12,), ratios=(1.0,), seeds=(0,),
                     controls=("leak", "shuffled"))
    picked = {r.labels["arm"]: r for r in runs if r.labels["arm"] in ("real", "leak", "shuffled")}
    train_ssc_runs(eval_context(stores["real"]), sweep_config(picked.values(), tmp_path, steps=100, batch_size=4))
    score = {arm: read_result(str(tmp_path), r.run_id)["miou"] for arm, r in picked.items()}
    chance = position_prior(real, np.asarray(picked["shuffled"].sources[0]["indices"]), real,
                            real.indices("val"))["miou"]
    # measured: leak 0.28, real 0.18, shuffled 0.085, the input-blind prior 0.098
    assert score["leak"] > score["real"] + 0.05, score
    assert score["real"] > score["shuffled"] + 0.04, score
    assert abs(score["shuffled"] - chance) < 0.04, (score, chance)


def test_same_seed_same_numbers_other_seed_other_numbers(stores, tmp_path):
    real = SceneStore.open(stores["real"])
    runs = plan_runs(real, "train", val_clips(real), {}, real_counts=(4,), ratios=(1.0,), seeds=(0, 1), controls=())
    aug = [r for r in runs if r.labels["arm"] == "real+aug"]  # symmetric copies exercise the transforms too
    again = [replace(aug[0], run_id="again")]
    train_ssc_runs(eval_context(stores["real"]), sweep_config(aug + again, tmp_path, steps=12, batch_size=4))
    first, second, other = (read_result(str(tmp_path), r.run_id) for r in (aug[0], again[0], aug[1]))
    for key in ("confusion", "confusion_all_voxels", "train_loss", "class_weights"):
        assert first[key] == second[key], key  # bitwise: one process, one thread
    assert first["confusion"] != other["confusion"]


def test_symmetries_of_the_grid():
    occ = generate_clip(G, 0, 0)["occupancy"]
    views = [augment(occ, k) for k in range(num_transforms(G.size))]
    assert num_transforms(G.size) == 8 and num_transforms((32, 16, 4)) == 4
    assert len({v.tobytes() for v in views}) == 8  # eight distinct images of one scene
    assert np.array_equal(views[1], occ[:, :, ::-1]) and np.array_equal(views[3], occ[:, ::-1, ::-1])
    assert all(np.array_equal(np.sort(v.ravel()), np.sort(occ.ravel())) for v in views)  # same voxels, moved
    with pytest.raises(ValueError, match="transform 4 for a 32x16 grid, expected 0..3"):
        augment(np.zeros((1, 32, 16, 4), np.uint8), 4)


# ---- mixed batches ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("share,batch", [(0.5, 8), (0.3, 8), (0.8, 3)])
def test_mixed_batches_hold_the_share_and_cycle_both_parts(share, batch):
    base, added = 20, 50
    order = MixedBatchOrder(base + added, base, share, seed=3)
    picks = [order.next(batch) for _ in range(60)]
    drawn = 0
    for pick in picks:
        assert pick.shape == (batch,)
        drawn += batch
        n_added = int((pick >= base).sum())
        assert abs(n_added - share * batch) <= 1  # every batch holds the share, give or take one sample
    total_added = sum(int((p >= base).sum()) for p in picks)
    assert abs(total_added - share * drawn) <= 1  # and the run as a whole holds it to within one sample
    flat = np.concatenate(picks)
    base_seq, added_seq = flat[flat < base], flat[flat >= base]
    assert sorted(base_seq[:base]) == list(range(base))  # each part in epochs of whole permutations
    assert sorted(added_seq[:added]) == list(range(base, base + added))
    again = MixedBatchOrder(base + added, base, share, seed=3)
    assert all(np.array_equal(p, again.next(batch)) for p in picks)


def test_class_weights_of_a_mixed_run_follow_the_batches():
    occ = np.zeros((10, 2, 2, 1), np.uint8)
    occ[2:] = 1  # base: 2 frames of class 0; added: 8 frames of class 1
    pooled = class_weights_of(occ, 2)
    mixed = class_weights_of(occ, 2, base=2, share=0.5)
    assert pooled[0] > pooled[1]  # pooled, class 0 is 20 % of the voxels
    assert float(mixed[0]) == pytest.approx(float(mixed[1]))  # the batches hold half of each


def test_plan_mixes_only_the_mixed_arms_and_a_mixed_run_records_its_share(stores, tmp_path):
    real = SceneStore.open(stores["real"])
    pools = {"procedural": whole_store_pool("procedural", SceneStore.open(stores["procedural"]))}
    runs = plan_runs(real, "train", val_clips(real), pools, real_counts=(2,), ratios=(2.0,), seeds=(0,),
                     controls=("leak",), synthetic_share=0.25)
    arms = {r.labels["arm"]: r for r in runs}
    for arm in ("real+aug", "real+gen"):
        assert (arms[arm].base_clips, arms[arm].added_share, arms[arm].num_clips) == (2, 0.25, 6)
    for arm in ("real", "gen", "leak"):
        assert arms[arm].added_share is None and arms[arm].base_clips is None
    train_ssc_runs(eval_context(stores["real"]), sweep_config([arms["real+gen"]], tmp_path, steps=3, batch_size=4))
    assert read_result(str(tmp_path), arms["real+gen"].run_id)["added_share"] == 0.25
    with pytest.raises(ValueError, match="base clips None: a mixed run needs 1 to 5 base clips"):
        replace(arms["real+gen"], base_clips=None)
    with pytest.raises(ValueError, match="added share 1.5: expected a number in"):
        replace(arms["real+gen"], added_share=1.5)


# ---- end to end on Ray Train -----------------------------------------------------------------------------------

def test_benchmark_on_ray_train_reports_a_collapsed_store(stores, ray_local, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    # stores named relative to the working directory, as a user types them: Ray Train workers start elsewhere
    monkeypatch.chdir(os.path.dirname(stores["real"]))
    real, collapsed = os.path.relpath(stores["real"]), os.path.relpath(stores["collapsed"])
    report = run_downstream(real, [collapsed], out, real_counts=(4,), ratios=(1.0,), seeds=(0,),
                            steps=8, batch_size=4, allow_overlap=True, eval_clips=3, log=lambda m: None)
    arms = sorted(r["arm"] for r in report["runs"])
    assert arms == ["gen", "real", "real+aug", "real+gen"]
    # Ray Data read only the first 3 of the 4 val clips for every worker
    assert {r["eval_clips"] for r in report["runs"]} == {3}
    assert (report["eval"]["clips"], report["eval"]["split_clips"]) == (3, 4)
    assert "mIoU % on 3 held-out real clips (the first 3 of the 4 in split val of " in report["table"]
    assert {r["train_loss"][-1][0] for r in report["runs"]} == {8}  # every arm the same optimizer steps
    assert {r["train_samples"] for r in report["runs"]} == {4 * 4, 8 * 4}  # n clips, or n + n·ratio, x 4 frames
    pool = report["synthetic"]["collapsed"]
    assert pool["collapsed"] and pool["distinct_clips"] == 1 and pool["diversity"] == 0.0
    assert any(f.startswith("COLLAPSED") for f in report["flags"])
    assert any(f.startswith("OVERLAP NOT RULED OUT") and "provenance names no generator" in f for f in report["flags"])
    saved = json.loads((out / "downstream.json").read_text())
    assert saved["curves"] == report["curves"] and len(saved["runs"]) == 4
    assert "COLLAPSED" in (out / "downstream.txt").read_text()
    with Image.open(out / "downstream.png") as png:
        assert png.size == (1000, 620)
    assert all(0.0 <= r["miou"] <= 1.0 for r in report["runs"])


# ---- the evaluation clips --------------------------------------------------------------------------------------

TINY = dict(real_counts=(2,), ratios=(1.0,), seeds=(0,), steps=2, batch_size=2, backend="local", log=lambda m: None)


def planned(out: Path, arm: str) -> dict:
    """The run of ``arm`` as ``plan.json`` records it (its training sources)."""
    return next(r for r in json.loads((out / "plan.json").read_text())["train"]["runs"] if r["labels"]["arm"] == arm)


def shown_command(report: dict, out: Path) -> dict:
    """The options of the command ``dcgen report`` shows for ``report``, parsed by the CLI itself."""
    import shlex

    import typer

    from dcgen.cli import app
    from dcgen.render.report_commands import Paths, downstream_command

    argv = shlex.split(downstream_command(report, out, Paths(out)))  # the stores lie outside out: written whole
    assert argv[:3] == ["dcgen", "eval", "downstream"], argv
    command = typer.main.get_command(app).commands["eval"].commands["downstream"]
    return command.make_context("downstream", argv[3:]).params


def test_the_report_breaks_the_gap_down_by_class_seed_by_seed():
    from dcgen.bench.downstream_report import curves, format_table, targets

    def run(arm, ratio, seed, miou, ious):
        return {"arm": arm, "pool": None if arm.startswith("real") and arm != "real+gen" else "gen", "ratio": ratio,
                "count": 64, "seed": seed, "real_clips": 64, "synthetic_clips": 0, "miou": miou,
                "completion_iou": 0.9, "miou_all_voxels": miou, "completion_iou_all_voxels": 0.9,
                "per_class_iou": ious}

    aug = [{"free": 0.9, "pole": 0.40, "road": 0.80, "vehicle": 0.30}, {"free": 0.9, "pole": 0.50, "road": 0.82,
                                                                        "vehicle": None}]
    mix = [{"free": 0.9, "pole": 0.05, "road": 0.81, "vehicle": 0.20}, {"free": 0.9, "pole": 0.15, "road": 0.82,
                                                                        "vehicle": 0.25}]
    results = ([run("real", None, s, 0.5, aug[s]) for s in (0, 1)] + [run("real+aug", 4.0, s, 0.5, aug[s])
                                                                      for s in (0, 1)]
               + [run("real+gen", 4.0, s, 0.4, mix[s]) for s in (0, 1)] + [run("gen", None, s, 0.3, mix[s])
                                                                           for s in (0, 1)])
    rows = curves(results)
    mixed = next(r for r in rows if r["arm"] == "real+gen")
    assert mixed["per_class_iou_mean"]["pole"] == pytest.approx(0.10) and "free" not in mixed["per_class_iou_mean"]
    aug_row = next(r for r in rows if r["arm"] == "real+aug")
    assert aug_row["per_class_iou_mean"]["vehicle"] == pytest.approx(0.30)  # a seed without the class: left out
    t = targets(rows, ["gen"], (64,), (4.0,), (0, 1))
    gaps = t["pools"]["gen"]["gain_over_augmentation"]["by_class"]
    assert [g["class"] for g in gaps] == ["pole", "vehicle", "road"]  # most negative first
    assert gaps[0]["points"] == pytest.approx(-35.0) and gaps[1]["points"] == pytest.approx(-10.0)  # seed 0 only
    assert gaps[2]["points"] == pytest.approx(0.5)
    table = format_table({"preset": "debug", "config": {"real_counts": [64], "seeds": [0, 1], "steps": 2,
                                                        "batch_size": 2, "synthetic_share": None},
                          "eval": {"path": "heldout.zarr", "split": "val", "clips": 4, "split_clips": 4},
                          "curves": rows, "targets": t, "chance": {"miou": 0.1}, "flags": []})
    assert "per-class IoU % at n=64 (mean over seeds):" in table
    assert "where it trails, IoU points by class: pole -35.0, vehicle -10.0" in table and "road +" not in table
    line = next(ln for ln in table.splitlines() if ln.startswith("real+gen") and "|" in ln and "10.0" in ln)
    assert line.split("|")[1].split() == ["10.0", "81.5", "22.5"]  # pole, road, vehicle in first-seen order
    # runs from before per-class IoU was recorded: no breakdown, no error
    bare = [{k: v for k, v in r.items() if k != "per_class_iou"} for r in results]
    assert "per-class IoU" not in format_table({"preset": "debug", "config": {"real_counts": [64], "seeds": [0, 1],
                                                "steps": 2, "batch_size": 2, "synthetic_share": None},
                                                "eval": {"path": "h.zarr", "split": "val", "clips": 4,
                                                         "split_clips": 4}, "curves": curves(bare),
                                                "targets": targets(curves(bare), ["gen"], (64,), (4.0,), (0, 1)),
                                                "chance": {"miou": 0.1}, "flags": []})


def test_an_evaluation_store_scores_every_arm_and_the_leak_control_trains_on_its_clips(stores, tmp_path):
    from dcgen.runtime import rng

    real, heldout = SceneStore.open(stores["real"]), SceneStore.open(stores["heldout"])
    out = tmp_path / "bench"
    # the held-out city's clips are all in its 'train' split: the real arms' split name, allowed for another store
    report = run_downstream(stores["real"], [stores["procedural"]], out, eval_store=stores["heldout"],
                            eval_split="train", controls=("leak",), **TINY)
    assert report["eval"] == {"path": heldout.path, "split": "train", "clips": 6, "split_clips": 6, "is_real": False,
                              "observed_mask": True}
    assert {r["eval_clips"] for r in report["runs"]} == {6}  # every arm scored on the held-out city's 6 clips
    assert planned(out, "leak")["sources"] == [{"path": heldout.path, "indices": heldout.indices("train").tolist(),
                                                "transforms": [0] * 6}]
    assert planned(out, "real")["sources"][0]["path"] == real.path  # the real arms still train on --real
    assert f"mIoU % on 6 held-out real clips (split train of {heldout.path})," in report["table"]
    assert (out / "downstream.txt").read_text().startswith(report["table"].splitlines()[0])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["eval"] == heldout.path and "eval_clips" not in plan
    # the command 'dcgen report' shows for it is the one that made it
    shown = shown_command(report, out)
    assert (shown["eval_store"], shown["eval_split"], shown["eval_clips"]) == (heldout.path, "train", None)
    assert os.path.realpath(shown["synthetic"]) == os.path.realpath(stores["procedural"])
    assert (shown["controls"], shown["steps"], shown["batch_size"], shown["local"]) == ("leak", 2, 2, True)
    # the input-blind prior: counted on the real training clips, scored on the held-out clips
    train = rng(0, 0).permutation(real.indices("train"))[:2]
    assert report["chance"] == position_prior(real, train, heldout, heldout.indices("train"))
    # another evaluation store, or a cap, is another benchmark: the directory is kept as it is
    saved = (out / "downstream.json").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(eval, eval_split, train differ\)"):
        run_downstream(stores["real"], [stores["procedural"]], out, controls=("leak",), **TINY)
    with pytest.raises(ValueError, match=r"other settings \(eval_clips, train differ\)"):
        run_downstream(stores["real"], [stores["procedural"]], out, eval_store=stores["heldout"], eval_split="train",
                       eval_clips=3, controls=("leak",), **TINY)
    assert (out / "downstream.json").read_bytes() == saved


def test_eval_clips_scores_the_first_clips_of_the_split_the_same_in_every_run(stores, tmp_path):
    real = SceneStore.open(stores["real"])
    first, second = (run_downstream(stores["real"], [stores["procedural"]], tmp_path / name, eval_clips=2,
                                    controls=("leak",), **TINY) for name in ("a", "b"))
    assert (first["eval"]["clips"], first["eval"]["split_clips"], first["eval"]["is_real"]) == (2, 4, True)
    assert {r["eval_clips"] for r in first["runs"]} == {2}
    assert planned(tmp_path / "a", "leak")["sources"][0]["indices"] == real.indices("val")[:2].tolist()
    assert "mIoU % on 2 held-out real clips (the first 2 of the 4 in split val of " in first["table"]
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["eval_clips"] == 2 and "eval" not in plan
    shown = shown_command(first, tmp_path / "a")
    assert (shown["eval_store"], shown["eval_split"], shown["eval_clips"]) == (None, "val", 2)
    assert [r["run_id"] for r in first["runs"]] == [r["run_id"] for r in second["runs"]]
    for a, b in zip(first["runs"], second["runs"]):  # same seed, same cap: the same clips, the same numbers
        assert (a["confusion"], a["train_loss"]) == (b["confusion"], b["train_loss"]), a["run_id"]
    assert first["chance"] == second["chance"]


# ---- overlap ---------------------------------------------------------------------------------------------------

def trained_generator(root: Path, data: str) -> dict:
    """Checkpoint directories of a VAE and a DiT whose metadata say they trained on ``data`` (the format
    ``train/runs.py`` writes: ``meta["train"]["extra"]``), the DiT through a latent store of ``data``."""
    from dcgen import checkpoint
    from dcgen.data.grid import LatentDims
    from dcgen.data.latent_store import LatentStore
    from dcgen.models.rollout import RolloutLayout

    store = SceneStore.open(data)
    idx = store.indices()
    dims = LatentDims.from_grid(G.num_frames, G.size, 4)
    rollout = RolloutLayout(dims)
    splits = store.manifest().column("split").to_pylist()
    LatentStore.create(str(root / "latents.zarr"), grid=G, dims=dims, rollout_size=rollout.size,
                       rollout_patch=rollout.patch, conditions=store.read(idx, ("command", "trajectory", "layout",
                                                                                "bev")),
                       clip_index=idx, splits=splits, prev_index=np.full(idx.size, -1), source=data,
                       vae_checkpoint=str(root / "vae"), vae_checkpoint_id="vae-test")
    checkpoint.save(root / "vae", kind="vae", config={}, state={}, step=1,
                    extra={"train": {"extra": {"data": data, "preset": "debug"}}})
    checkpoint.save(root / "dit", kind="dit", config={}, state={}, step=1,
                    extra={"train": {"extra": {"latents": str(root / "latents.zarr"), "preset": "debug"}}})
    return {"generator": "dcgen synth", "job": {"vae": str(root / "vae"), "dit": str(root / "dit")}}


def test_a_generator_trained_on_the_evaluation_clips_is_refused(stores, tmp_path):
    provenance = trained_generator(tmp_path, stores["real"])
    generated = write_store(tmp_path / "generated.zarr", [generate_clip(G, 9, i) for i in range(8)],
                            provenance=provenance)
    out = tmp_path / "bench"
    with pytest.raises(ValueError) as e:  # scoring on the split the generator trained on
        run_downstream(stores["real"], [generated], out, real_split="val", eval_split="train", real_counts=(2,),
                       ratios=(1.0,), seeds=(0,), steps=4, log=lambda m: None)
    message = str(e.value)
    assert "its vae" in message and "its dit" in message and "trained on 12 of the 12 evaluation clips" in message
    assert "--allow-overlap" in message and not out.exists()
    # the usual split: nothing seen in training, only the best checkpoint was chosen on it (a warning)
    real = SceneStore.open(stores["real"])
    rep = overlap_report(SceneStore.open(generated), real, "val", checksums(real, "val"))
    assert not rep["problems"] and all(t["eval_clips_seen"] == 0 for t in rep["trained_on"])
    assert len(rep["warnings"]) == 2 and "chose its best checkpoint on 4 of the evaluation clips" in rep["warnings"][0]


def test_a_generator_that_cannot_be_looked_up_is_refused(stores, tmp_path):
    ids_only = {"generator": "dcgen sample", "vae": "vae-232-fc932cb32ea9", "dit": "dit-725-caab70e77d60"}
    generated = write_store(tmp_path / "generated.zarr", [generate_clip(G, 9, i) for i in range(8)],
                            provenance=ids_only)
    with pytest.raises(ValueError, match="records 'vae-232-fc932cb32ea9', not a checkpoint directory here"):
        run_downstream(stores["real"], [generated], tmp_path / "bench", real_counts=(2,), ratios=(1.0,), seeds=(0,),
                       steps=4, log=lambda m: None)
    assert not (tmp_path / "bench").exists()


def test_a_synthetic_clip_identical_to_an_evaluation_clip_is_refused(stores, tmp_path):
    real = SceneStore.open(stores["real"])
    k = int(real.indices("val")[0])
    copied = {**generate_clip(G, 9, 0), **{n: v[0] for n, v in real.read([k]).items()}}
    leaky = write_store(tmp_path / "leaky.zarr", [copied] + [generate_clip(G, 9, i) for i in range(1, 8)],
                        provenance=SYNTH_CITY)
    with pytest.raises(ValueError, match="holds 1 clips identical to evaluation clips"):
        run_downstream(stores["real"], [leaky], tmp_path / "bench", real_counts=(2,), ratios=(1.0,), seeds=(0,),
                       steps=4, log=lambda m: None)
    assert not (tmp_path / "bench").exists()


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_stores(stores):
    root = stores["root"]
    clips = [generate_clip(G, 11, i) for i in range(4)]
    other_grid = write_store(root / "coarse.zarr", clips, provenance=SYNTH_CITY,
                             grid=replace(G, voxel_size=(3.2, 3.2, 0.75)))
    renamed = write_store(root / "renamed.zarr", clips, provenance=SYNTH_CITY)
    group = zarr.open_group(renamed, mode="r+")
    meta = dict(group.attrs["dcgen"])
    meta["classes"] = [dict(c, name="car") if c["name"] == "vehicle" else c for c in meta["classes"]]
    group.attrs["dcgen"] = meta
    empty = write_store(root / "empty.zarr", [], provenance=SYNTH_CITY)
    return {"grid": other_grid, "classes": renamed, "empty": empty}


@pytest.mark.parametrize("case,options,message", [
    ("grid", {}, "grid differs from the real store"),
    ("classes", {}, "class table"),
    ("empty", {}, "manifest lists no complete clip; nothing to train on"),
    ("procedural", {"real_counts": (13,)}, "has 12 clips in split 'train', expected counts <= 12"),
    ("procedural", {"ratios": (4.0,)}, "holds 12 clips but real count 4 x ratio 4 needs 16"),
    ("procedural", {"steps": 0}, "--steps 0: expected a positive number of optimizer steps"),
    ("procedural", {"batch_size": 0}, "--batch-size 0"),
    ("procedural", {"ratios": (-1.0,)}, "--ratios [-1.0]: expected positive numbers"),
    ("procedural", {"seeds": (0, 0)}, "--seeds [0, 0]: a value is listed twice"),
    ("procedural", {"controls": ("peek",)}, "--controls ['peek']"),
    ("procedural", {"eval_split": "test"}, "split 'test' (the evaluation clips) has no complete clip"),
    ("procedural", {"synthetic_share": 0.0}, "--synthetic-share 0.0: expected the share of every mixed batch"),
    ("procedural", {"synthetic_share": 1.0}, "strictly between 0 and 1"),
    ("procedural", {"synthetic_share": float("nan")}, "--synthetic-share nan"),
    (None, {}, "no generated data"),
])
def test_bad_input_stops_before_training(stores, bad_stores, tmp_path, case, options, message):
    synthetic = [] if case is None else [stores.get(case) or bad_stores[case]]
    out = tmp_path / "bench"
    kwargs = {"real_counts": (4,), "ratios": (1.0,), "seeds": (0,), "steps": 4, **options}
    with pytest.raises(ValueError) as e:
        run_downstream(stores["real"], synthetic, out, log=lambda m: None, **kwargs)
    assert message in str(e.value)
    assert not out.exists()


@pytest.fixture(scope="module")
def training_copy(stores):
    """A store whose val split holds copies of three of the real store's training clips."""
    real = SceneStore.open(stores["real"])
    data = real.read(real.indices("train")[:3])
    clips = [{k: v[j] for k, v in data.items()} for j in range(3)]
    return write_store(stores["root"] / "copy.zarr", clips, provenance=None,
                       rows=[{"scene": f"copy-{j}", "split": "val"} for j in range(3)])


@pytest.mark.parametrize("store,options,message", [
    ("grid", {}, "grid differs from the real store"),
    ("classes", {}, "class table"),
    ("procedural", {}, "procedural.zarr: split 'val' (the evaluation clips) has no complete clip"),
    ("heldout", {"eval_split": "test"}, "heldout.zarr: split 'test' (the evaluation clips) has no complete clip"),
    ("missing", {}, "missing.zarr: no scene store there"),
    (None, {"eval_clips": 0}, "--eval-clips 0: expected a positive number of evaluation clips"),
    (None, {"eval_clips": 5}, "--eval-clips 5: "),
    ("heldout", {"eval_split": "train", "eval_clips": 7}, "has 6 clips in split 'train', expected <= 6"),
    ("copy", {}, "3 of its 3 evaluation clips (split 'val') are identical to clips of split 'train'"),
    (None, {"real_split": "val"}, "--real-split and --eval-split are both 'val'"),
    ("real", {"real_split": "val"}, "--real-split and --eval-split are both 'val'"),
])
def test_a_bad_evaluation_store_or_cap_stops_before_anything_is_written(stores, bad_stores, training_copy, tmp_path,
                                                                         store, options, message):
    paths = {**stores, **bad_stores, "copy": training_copy, "missing": str(tmp_path / "missing.zarr")}
    if store == "real":  # the real store under another name is still the real store
        os.symlink(stores["real"], tmp_path / "alias.zarr")
    eval_store = None if store is None else str(tmp_path / "alias.zarr") if store == "real" else paths[store]
    out = tmp_path / "bench"
    with pytest.raises(ValueError) as e:
        run_downstream(stores["real"], [stores["procedural"]], out, eval_store=eval_store,
                       **{**TINY, "real_counts": (4,), **options})
    assert message in str(e.value)
    assert not out.exists()
    if store in ("grid", "classes"):  # names both stores and what differs
        assert str(e.value).startswith(f"--eval {SceneStore.open(paths[store]).path}: ")
        assert SceneStore.open(stores["real"]).path in str(e.value)
        assert ("voxel_size" if store == "grid" else "'car'") in str(e.value)
    if options.get("eval_clips") == 5:
        assert "has 4 clips in split 'val', expected <= 4" in str(e.value)


def test_an_existing_directory_of_other_settings_is_kept(stores, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a downstream benchmark"):
        run_downstream(stores["real"], [stores["procedural"]], out, real_counts=(2,), ratios=(1.0,), seeds=(0,),
                       steps=4, overwrite=True, log=lambda m: None)
    assert (out / "notes.txt").read_text() == "mine"


# ---- gate value ------------------------------------------------------------------------------------------------

def synth_rows(attempts: list[int]) -> list[dict]:
    """Manifest rows as ``dcgen synth`` writes them: the attempt of each scene of one block."""
    return [{"scene": f"synth-{i}", "split": "train", "attempt": a, "block": 0, "scene_index": i}
            for i, a in enumerate(attempts)]


def test_ungated_pool_is_the_first_attempt_of_every_scene(stores, tmp_path):
    clips = [generate_clip(G, 12, i) for i in range(6)]
    gated = write_store(tmp_path / "scenes.zarr", clips[:4], provenance=SYNTH_CITY, rows=synth_rows([0, 1, 0, 2]))
    rejected = write_store(tmp_path / "scenes.zarr" / "rejected", clips[4:] + clips[:1],
                           provenance=None, rows=synth_rows([0, 0, 1]))
    pool = ungated_pool("ungated", SceneStore.open(gated), SceneStore.open(rejected))
    assert pool.clips() == [(gated, 0), (gated, 2), (rejected, 0), (rejected, 1)]
    real = SceneStore.open(stores["real"])
    pools = {"gated": whole_store_pool("gated", SceneStore.open(gated)), "ungated": pool}
    runs = plan_runs(real, "train", val_clips(real), pools, real_counts=(1, 2), ratios=(1.0,), seeds=(0,),
                     controls=(), gate_pools=("ungated",))
    ungated_counts = sorted(r.labels["count"] for r in runs if r.labels["pool"] == "ungated")
    assert ungated_counts == [2, 2]  # real+gen and gen, at the largest count only
    assert sorted(r.labels["count"] for r in runs if r.labels["pool"] == "gated") == [1, 1, 2, 2]


def test_gate_value_in_process_and_a_finished_sweep_is_not_trained_again(stores, tmp_path):
    """The local backend on a synth job's output: gated against ungated scenes; the same call again reuses every
    run's result, other settings on the same directory are refused."""
    clips = [generate_clip(G, 13, i) for i in range(8)]
    gated = write_store(tmp_path / "scenes.zarr", clips[:4], provenance=SYNTH_CITY, rows=synth_rows([0, 1, 1, 0]))
    write_store(tmp_path / "scenes.zarr" / "rejected", clips[4:], provenance=None, rows=synth_rows([0, 0, 1, 2]))
    out = tmp_path / "bench"
    options = dict(real_counts=(2,), ratios=(1.0,), seeds=(0,), steps=3, batch_size=2, backend="local",
                   log=lambda m: None)
    report = run_downstream(stores["real"], [], out, gated_store=gated, **options)
    assert sorted(report["synthetic"]) == ["gated", "ungated"] and report["synthetic"]["ungated"]["clips"] == 4
    gate = report["gate_value"]
    assert [a["arm"] for a in gate["arms"]] == ["real+gen", "gen"]
    assert all(a["gated_minus_ungated"]["mean"] is not None for a in gate["arms"])
    assert "gate value at n=2" in report["table"]
    shown = shown_command(report, out)  # the synth output as given, not its pools' stores as synthetic ones
    assert (shown["gated"], shown["synthetic"], shown["rejected"]) == (str(gated), "", None)
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 6  # real, real+aug, and real+gen and gen for each of the two pools
    stamps = [p.stat().st_mtime_ns for p in runs]
    again = run_downstream(stores["real"], [], out, gated_store=gated, **options)
    assert [p.stat().st_mtime_ns for p in runs] == stamps and again["curves"] == report["curves"]
    with pytest.raises(ValueError, match="holds a downstream benchmark with other settings"):
        run_downstream(stores["real"], [], out, gated_store=gated, **{**options, "steps": 4})


def test_a_sweep_with_a_synthetic_share_says_so_and_a_share_is_a_setting_of_the_directory(stores, tmp_path):
    out = tmp_path / "bench"
    options = dict(real_counts=(2,), ratios=(2.0,), seeds=(0,), steps=2, batch_size=4, backend="local",
                   log=lambda m: None)
    report = run_downstream(stores["real"], [stores["procedural"]], out, synthetic_share=0.5, **options)
    assert report["config"]["synthetic_share"] == 0.5
    assert "real+aug / real+gen batches: 50% from the added clips" in report["table"]
    shares = {r["arm"]: r["added_share"] for r in report["runs"]}
    assert shares == {"real": None, "real+aug": 0.5, "real+gen": 0.5, "gen": None}
    with pytest.raises(ValueError, match="other settings"):  # the proportional sweep is another benchmark
        run_downstream(stores["real"], [stores["procedural"]], out, **options)
    assert json.loads((out / "downstream.json").read_text())["config"]["synthetic_share"] == 0.5


def test_a_real_arm_that_scores_lower_with_more_clips_is_flagged_step_bound():
    from dcgen.bench.downstream_report import curves, step_bound_flags

    def results(scores: dict[int, list[float]]) -> list[dict]:
        return [{"arm": "real", "pool": None, "ratio": None, "count": n, "seed": seed, "real_clips": n,
                 "synthetic_clips": 0, "miou": m, "completion_iou": 0.9, "miou_all_voxels": m,
                 "completion_iou_all_voxels": 0.9} for n, ms in scores.items() for seed, m in enumerate(ms)]

    falling = step_bound_flags(curves(results({16: [0.42, 0.44], 64: [0.38, 0.40]})))
    assert len(falling) == 1 and "scores lower with 64 real clips than with 16" in falling[0]
    assert "-4.0 points seed by seed" in falling[0] and "raise --steps" in falling[0]
    assert step_bound_flags(curves(results({16: [0.30, 0.31], 64: [0.36, 0.35]}))) == []
    assert step_bound_flags(curves(results({64: [0.36, 0.35]}))) == []  # one count: nothing to compare


def test_eval_downstream_command_refuses_bad_input_before_training(stores, bad_stores, tmp_path):
    from typer.testing import CliRunner

    from dcgen.cli import app

    out = tmp_path / "bench"
    args = ["eval", "downstream", "--real", stores["real"], "--synthetic", stores["procedural"], "--out", str(out),
            "--real-counts", "4", "--ratios", "1", "--seeds", "0", "--local"]
    result = CliRunner().invoke(app, [*args, "--steps", "0"])
    assert result.exit_code == 2 and "--steps 0: expected a positive number of optimizer steps" in result.output
    result = CliRunner().invoke(app, [*args, "--steps", "4", "--real-counts", "4,x"])
    assert result.exit_code == 2 and "expected comma-separated numbers" in result.output
    result = CliRunner().invoke(app, [*args, "--steps", "4", "--synthetic-share", "1.5"])
    assert result.exit_code == 2 and "--synthetic-share 1.5: expected the share" in result.output
    result = CliRunner().invoke(app, [*args, "--steps", "4", "--eval-clips", "0"])
    assert result.exit_code == 2 and "--eval-clips 0: expected a positive number" in result.output
    result = CliRunner().invoke(app, [*args, "--steps", "4", "--eval", bad_stores["grid"]])
    assert result.exit_code == 2 and "--eval " in result.output and "grid differs from the real store" in result.output
    assert not out.exists()
