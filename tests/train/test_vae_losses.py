"""VAE loss terms against hand computations and a brute-force Lovász extension."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dcgen.data.grid import PLANE_NAMES
from dcgen.train.vae_losses import (class_weights, kl_divergence, lovasz_softmax, segmentation_loss, vae_loss,
                                   weighted_cross_entropy)


def test_class_weights_hand_computed():
    w = class_weights([100, 10, 0, 1])
    expected = [1.0, 10 ** (1 / 3), 0.0, 100 ** (1 / 3)]
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)
    assert torch.equal(class_weights(torch.tensor([5, 5])), torch.ones(2))


def test_class_weight_power_leans_on_rare_classes():
    counts = [1000, 100, 0, 1]
    assert torch.equal(class_weights(counts, 0.0), torch.tensor([1.0, 1.0, 0.0, 1.0]))  # unweighted (never-seen: 0)
    assert torch.allclose(class_weights(counts, 1.0), torch.tensor([1.0, 10.0, 0.0, 1000.0]))  # inverse frequency
    spec, half = class_weights(counts), class_weights(counts, 0.5)
    assert torch.allclose(half, torch.tensor([1.0, 10 ** 0.5, 0.0, 1000 ** 0.5]))
    assert half[3] / half[1] > spec[3] / spec[1]  # the rarest class gains on the common ones
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"class weight power {bad} is outside"):
            class_weights(counts, bad)


def test_train_vae_takes_the_power_from_the_preset_unless_given(tmp_path):
    from debug_models import write_city_store

    from dcgen.presets import get_preset
    from dcgen.train.runs import train_vae

    store = write_city_store(tmp_path / "city.zarr", num_scenes=5, seed=0)
    preset = train_vae(store, "debug", tmp_path / "run", dry_run=True)
    given = train_vae(store, "debug", tmp_path / "run", class_weight_power=1.0, dry_run=True)
    assert preset["run"]["extra"]["class_weight_power"] == get_preset("debug").vae_recipe.class_weight_power
    assert given["run"]["extra"]["class_weight_power"] == 1.0
    assert max(given["run"]["class_weights"]) > max(preset["run"]["class_weights"])
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_cli_refuses_a_class_weight_power_out_of_bounds_before_writing(tmp_path):
    from debug_models import write_city_store
    from typer.testing import CliRunner

    from dcgen.cli import app

    store = write_city_store(tmp_path / "city.zarr", num_scenes=5, seed=0)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "vae", "--data", store, "--preset", "debug", "--out", str(out),
                                      "--class-weight-power", "2"])
    assert result.exit_code != 0 and "class weight power 2.0 is outside" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("counts,match", [
    ([[1, 2], [3, 4]], "one count per class"),
    ([3, -1, 2], "non-negative"),
    ([0, 0, 0], "all zero"),
])
def test_class_weights_reject_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        class_weights(counts)


def test_weighted_cross_entropy_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]).T.unsqueeze(0)  # [1, K=3, P=2]
    target = torch.tensor([[0, 1]])
    w = torch.tensor([1.0, 3.0, 5.0])
    nll = [-F.log_softmax(torch.tensor([2.0, 0.0, -1.0]), 0)[0], -F.log_softmax(torch.tensor([0.5, 1.5, 0.0]), 0)[1]]
    expected = (1.0 * nll[0] + 3.0 * nll[1]) / (1.0 + 3.0)
    assert torch.allclose(weighted_cross_entropy(logits, target, w), expected)


def _jaccard_loss(gt: set, mistakes: set) -> float:
    """Δ_J(M) = 1 − |G \\ M| / |G ∪ M| (Berman et al., eq. 5)."""
    return 1.0 - len(gt - mistakes) / len(gt | mistakes)


def _lovasz_extension_brute(errors: list[float], gt: set) -> float:
    """max over all orderings of Σ m_π(i) (Δ(S_i) − Δ(S_{i−1})): the Lovász extension of a submodular Δ."""
    best = -math.inf
    for order in itertools.permutations(range(len(errors))):
        total, prefix, prev = 0.0, set(), 0.0
        for i in order:
            prefix = prefix | {i}
            cur = _jaccard_loss(gt, prefix)
            total += errors[i] * (cur - prev)
            prev = cur
        best = max(best, total)
    return best


def test_lovasz_matches_brute_force_extension():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 3, 6, generator=g), dim=1)  # K = 3, P = 6
    target = torch.tensor([[0, 2, 2, 0, 2, 0]])  # class 1 absent
    expected = []
    for c in (0, 2):
        fg = [int(v) for v in (target[0] == c)]
        errors = [abs(f - p) for f, p in zip(fg, probs[0, c].tolist())]
        expected.append(_lovasz_extension_brute(errors, {i for i, f in enumerate(fg) if f}))
    assert lovasz_softmax(probs, target).item() == pytest.approx(sum(expected) / 2, abs=1e-6)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    target = torch.tensor([[0, 1, 1, 2, 2, 2, 0, 1]])
    pred = torch.tensor([[0, 1, 2, 2, 2, 0, 0, 1]])
    probs = F.one_hot(pred, 4).permute(0, 2, 1).float()  # class 3 absent from both
    ious = []
    for c in (0, 1, 2):
        t, p = target == c, pred == c
        ious.append((t & p).sum().item() / (t | p).sum().item())
    expected = sum(1 - v for v in ious) / 3
    assert lovasz_softmax(probs, target).item() == pytest.approx(expected, abs=1e-6)


def test_kl_hand_computed_and_mean_over_all_latent_elements():
    mu = {n: torch.zeros(1, 2, 2, 2) for n in PLANE_NAMES}
    logvar = {n: torch.zeros(1, 2, 2, 2) for n in PLANE_NAMES}
    assert kl_divergence(mu, logvar).item() == 0.0
    mu["xy"] = torch.ones(1, 2, 2, 2)  # 8 of 48 elements at KL 0.5
    logvar["tz"] = torch.full((1, 2, 2, 2), math.log(2.0))  # 8 at 0.5 (2 − 1 − log 2)
    expected = (8 * 0.5 + 8 * 0.5 * (2 - 1 - math.log(2.0))) / 48
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_vae_loss_combines_the_parts_and_backpropagates():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    mu = {n: torch.randn(2, 3, 2, 2, generator=g, requires_grad=True) for n in PLANE_NAMES}
    logvar = {n: torch.randn(2, 3, 2, 2, generator=g) for n in PLANE_NAMES}
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    total, parts = vae_loss(logits, target, mu, logvar, w, beta=0.01, lovasz_weight=2.0)
    assert set(parts) == {"ce", "lovasz", "kl", "total"}
    assert total.item() == pytest.approx((parts["ce"] + 2.0 * parts["lovasz"] + 0.01 * parts["kl"]).item(), rel=1e-6)
    assert parts["lovasz"].item() == pytest.approx(lovasz_softmax(logits.softmax(1), target).item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert mu["xy"].grad is not None


@pytest.mark.parametrize("scale", [1.0, 4.0, 30.0])  # 30: saturated softmax, probabilities of exactly 0 and 1
def test_fused_segmentation_loss_equals_autograd_through_the_reference_terms(scale):
    g = torch.Generator().manual_seed(2)
    logits = scale * torch.randn(2, 6, 3, 20, 10, generator=g)
    target = torch.randint(0, 6, (2, 3, 20, 10), generator=g)
    target[target == 2] = 5  # class 2 absent
    target[:, 0] = 0
    w = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5, 2.5])
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    # both laid out as the decoder's logits are (a transposed view) and a flipped batch may be: not contiguous
    logits_view = a.transpose(1, 2).contiguous().transpose(1, 2)
    target_view = target.transpose(1, 3).contiguous().transpose(1, 3)
    assert not logits_view.is_contiguous() and not target_view.is_contiguous()
    total, ce, lovasz = segmentation_loss(logits_view, target_view, w, lovasz_weight=0.7)
    ref_ce, ref_lovasz = weighted_cross_entropy(b, target, w), lovasz_softmax(b.softmax(1), target)
    (3.0 * total).backward()  # a scaled upstream gradient reaches the kept one
    (3.0 * (ref_ce + 0.7 * ref_lovasz)).backward()
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-5)
    assert lovasz.item() == pytest.approx(ref_lovasz.item(), rel=1e-5, abs=1e-7)
    assert not ce.requires_grad and not lovasz.requires_grad
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-8)


def test_fused_segmentation_loss_returns_the_gradient_in_the_logits_dtype():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, 6, 7, generator=g).bfloat16().requires_grad_(True)
    target = torch.randint(0, 4, (1, 6, 7), generator=g)
    ref = logits.detach().float().requires_grad_(True)
    total, _, _ = segmentation_loss(logits, target, torch.ones(4))
    total.backward()
    (weighted_cross_entropy(ref, target, torch.ones(4)) + lovasz_softmax(ref.softmax(1), target)).backward()
    assert logits.grad.dtype == torch.bfloat16
    assert torch.allclose(logits.grad.float(), ref.grad.bfloat16().float(), rtol=2e-2, atol=1e-4)


def test_vae_loss_rejects_mismatched_inputs():
    logits = torch.randn(1, 4, 3, 5)
    mu = {n: torch.zeros(1, 1, 1, 1) for n in PLANE_NAMES}
    with pytest.raises(ValueError, match=r"logits shape \(1, 4, 3, 5\) does not match target shape \(1, 3, 4\)"):
        vae_loss(logits, torch.zeros(1, 3, 4, dtype=torch.long), mu, mu, torch.ones(4))
    with pytest.raises(ValueError, match=r"class weights have shape \(3,\), expected \(4,\)"):
        vae_loss(logits, torch.zeros(1, 3, 5, dtype=torch.long), mu, mu, torch.ones(3))


def _lovasz_sorted(probs_BKP: torch.Tensor, target_BP: torch.Tensor) -> torch.Tensor:
    """The textbook Lovász-softmax (Berman et al., Alg. 1): sort every error, weights = steps of the Jaccard loss."""
    k = probs_BKP.shape[1]
    probs_KP, target_P = probs_BKP.movedim(1, 0).reshape(k, -1), target_BP.reshape(-1)
    losses = []
    for c in torch.unique(target_P).tolist():
        fg_P = (target_P == c).float()
        errors_P = (fg_P - probs_KP[c]).abs()
        errors_sorted_P, order_P = errors_P.sort(descending=True)
        fg_sorted_P = fg_P[order_P]
        n = fg_sorted_P.sum()
        jaccard_P = 1.0 - (n - fg_sorted_P.cumsum(0)) / (n + (1.0 - fg_sorted_P).cumsum(0))
        steps_P = torch.cat([jaccard_P[:1], jaccard_P[1:] - jaccard_P[:-1]])
        losses.append((errors_sorted_P * steps_P).sum())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("scale", [1.0, 4.0, 30.0])  # 30: saturated softmax, large bins of tied errors
def test_lovasz_from_histograms_matches_the_sorted_form(scale):
    g = torch.Generator().manual_seed(1)
    logits = (scale * torch.randn(2, 5, 40_000, generator=g, dtype=torch.float64)).float()
    target = torch.randint(0, 5, (2, 40_000), generator=g)
    target[:, :25_000] = 0  # a dominant class, as free space is
    target[target == 3] = 4  # class 3 absent
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    fast, ref = lovasz_softmax(a.softmax(1), target), _lovasz_sorted(b.softmax(1), target)
    fast.backward()
    ref.backward()
    assert fast.item() == pytest.approx(ref.item(), abs=1e-5)
    cos = F.cosine_similarity(a.grad.flatten().double(), b.grad.flatten().double(), dim=0).item()
    assert cos > 0.999
    assert a.grad.norm().item() == pytest.approx(b.grad.norm().item(), rel=1e-3)
