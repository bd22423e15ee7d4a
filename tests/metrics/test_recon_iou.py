"""Reconstruction IoU against hand-computed cases: masks, absent classes, split-level accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcgen.metrics.recon_iou import IoUAccumulator

TARGET = np.array([0, 1, 1, 2, 2, 0, 3, 0])
PRED = np.array([0, 1, 2, 2, 0, 1, 3, 4])


def test_hand_computed_case():
    acc = IoUAccumulator(5)
    acc.update(PRED, TARGET)
    # class 1: tp 1 fp 1 fn 1; class 2: tp 1 fp 1 fn 1; class 3: tp 1; class 4 only predicted (absent in GT)
    assert acc.tp.tolist() == [1, 1, 1, 1, 0]
    assert acc.fp.tolist() == [1, 1, 1, 0, 1]
    assert acc.fn.tolist() == [2, 1, 1, 0, 0]
    iou = acc.per_class_iou()
    assert iou["building"] == pytest.approx(1 / 3) and iou["barrier"] == pytest.approx(1 / 3)
    assert iou["other"] == 1.0 and iou["pedestrian"] is None and iou["free"] == pytest.approx(1 / 4)
    assert acc.miou() == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    # occupied: gt occ at 1,2,3,4,6; pred occ at 1,2,3,5,6,7 → tp 4 (1,2,3,6), fp 2 (5,7), fn 1 (4)
    assert acc.binary_iou() == pytest.approx(4 / 7)


def test_mask_excludes_unobserved_voxels():
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    acc = IoUAccumulator(5)
    acc.update(PRED, TARGET, mask)
    ref = IoUAccumulator(5)
    ref.update(PRED[mask], TARGET[mask])
    assert np.array_equal(acc.counts, ref.counts)
    assert acc.counts.sum() == mask.sum()
    # class 4's only prediction is masked out; class 2 keeps one gt voxel, predicted correctly
    assert acc.per_class_iou()["barrier"] == 1.0 and acc.fp[4] == 0


def test_split_accumulation_is_not_a_mean_of_clip_ious():
    acc = IoUAccumulator(3)
    acc.update(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]))  # clip IoU 1
    acc.update(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]))  # clip IoU 0.25
    assert acc.miou() == pytest.approx(5 / 8)  # not (1 + 0.25) / 2


def test_numpy_and_torch_inputs_agree_and_merge_adds_counts():
    a, b = IoUAccumulator(5), IoUAccumulator(5)
    a.update(PRED.reshape(2, 4), TARGET.reshape(2, 4))
    b.update(torch.from_numpy(PRED.reshape(2, 4)).to(torch.uint8), torch.from_numpy(TARGET.reshape(2, 4)),
             torch.ones(2, 4, dtype=torch.bool))
    assert np.array_equal(a.counts, b.counts)
    a.merge(b)
    assert np.array_equal(a.counts, 2 * b.counts) and a.miou() == pytest.approx(b.miou())


def test_nothing_present_gives_nan_and_table_prints():
    acc = IoUAccumulator(3)
    assert math.isnan(acc.miou()) and math.isnan(acc.binary_iou())
    acc.update(np.array([0, 2, 2]), np.array([0, 2, 1]))
    table = acc.table()
    assert "building" in table and "absent" not in table.split("\n")[2]
    assert "mIoU" in table and "occupied" in table
    assert IoUAccumulator(13).class_names[-1] == "class12"


@pytest.mark.parametrize("call,match", [
    (lambda a: a.update(np.zeros(3, int), np.zeros(4, int)), r"pred shape \(3,\) differs from target shape \(4,\)"),
    (lambda a: a.update(np.zeros(4, int), np.array([0, 1, 5, 0])), r"target class ids span \[0, 5\]"),
    (lambda a: a.update(np.array([0, -1, 0, 0]), np.zeros(4, int)), r"pred class ids span \[-1, 0\]"),
    (lambda a: a.update(np.zeros(4, int), np.zeros(4, int), np.ones(3, bool)), r"mask shape \(3,\)"),
    (lambda a: a.update([0, 1], np.zeros(2, int)), "pred must be a numpy array or torch tensor, got list"),
    (lambda a: a.merge(IoUAccumulator(4)), "cannot merge IoU over 4 classes"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(IoUAccumulator(3))


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_classes=1"):
        IoUAccumulator(1)
    with pytest.raises(ValueError, match="free_class=3"):
        IoUAccumulator(3, free_class=3)
    with pytest.raises(ValueError, match="2 class names given for num_classes=3"):
        IoUAccumulator(3, class_names=("a", "b"))
