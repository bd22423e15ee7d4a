"""The HexPlane VAE loss (SPEC §2): class-weighted cross-entropy + Lovász-softmax + β · KL.

Class weights are ``w_c = (max_k p_k / p_c)^(1/3)`` from the class frequencies of the training data; a class that
never occurs gets weight 0 (it is never a target, so its weight could only matter through a mistake).
Lovász-softmax is the convex Lovász extension of the Jaccard loss (Berman et al., CVPR 2018, Alg. 1): per class
present in the target, the errors ``|1[y = c] − p_c|`` are sorted in decreasing order and dotted with the gradient
of the Jaccard loss along that order; the loss is the mean over present classes. The KL term is the closed-form
KL(N(μ, σ²) ‖ N(0, 1)) averaged over every latent element of the six planes.

Legend: B batch, K classes, T time, X/Y/Z space, P flattened voxels, C present classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dcgen.models.hexplane import PLANE_NAMES


def class_weights(counts) -> torch.Tensor:
    """``[K]`` float32 weights ``(max_k p_k / p_c)^(1/3)`` from per-class voxel counts; 0 for classes never seen."""
    counts_K = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if counts_K.ndim != 1 or counts_K.size < 2:
        raise ValueError(f"class counts have shape {counts_K.shape}, expected one count per class (K >= 2)")
    if not np.all(np.isfinite(counts_K)) or np.any(counts_K < 0):
        raise ValueError(f"class counts {counts_K.tolist()} must be finite and non-negative")
    if counts_K.sum() == 0:
        raise ValueError("class counts are all zero; expected a histogram of at least one voxel")
    weights_K = np.zeros_like(counts_K)
    seen = counts_K > 0
    weights_K[seen] = (counts_K.max() / counts_K[seen]) ** (1.0 / 3.0)
    return torch.tensor(weights_K, dtype=torch.float32)


def weighted_cross_entropy(logits_BKTXYZ: torch.Tensor, target_BTXYZ: torch.Tensor,
                           weights_K: torch.Tensor) -> torch.Tensor:
    """Class-weighted CE, normalised by the summed weight of the targets (PyTorch's weighted mean)."""
    return F.cross_entropy(logits_BKTXYZ, target_BTXYZ.long(), weight=weights_K.to(logits_BKTXYZ))


def lovasz_grad(fg_sorted_CP: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss w.r.t. sorted errors: ``Δ(S_i) − Δ(S_{i−1})`` along each row."""
    num_fg_C1 = fg_sorted_CP.sum(dim=1, keepdim=True)
    intersection_CP = num_fg_C1 - fg_sorted_CP.cumsum(dim=1)
    union_CP = num_fg_C1 + (1.0 - fg_sorted_CP).cumsum(dim=1)
    jaccard_CP = 1.0 - intersection_CP / union_CP
    return torch.cat([jaccard_CP[:, :1], jaccard_CP[:, 1:] - jaccard_CP[:, :-1]], dim=1)


def lovasz_softmax(probs_BKTXYZ: torch.Tensor, target_BTXYZ: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over the classes present in ``target``, all voxels of the batch pooled.

    ``probs`` are softmax probabilities ``[B, K, ...]``; ``target`` the class ids ``[B, ...]``.
    """
    num_classes = probs_BKTXYZ.shape[1]
    probs_KP = probs_BKTXYZ.movedim(1, 0).reshape(num_classes, -1).float()
    target_P = target_BTXYZ.reshape(-1).long()
    if target_P.numel() != probs_KP.shape[1]:
        raise ValueError(f"Lovász: target has {target_P.numel()} voxels, probabilities {probs_KP.shape[1]}")
    present_C = torch.nonzero(torch.bincount(target_P, minlength=num_classes)).squeeze(1)
    fg_CP = (target_P.unsqueeze(0) == present_C.unsqueeze(1)).float()
    errors_CP = (fg_CP - probs_KP[present_C]).abs()
    errors_sorted_CP, order_CP = errors_CP.sort(dim=1, descending=True)
    grad_CP = lovasz_grad(fg_CP.gather(1, order_CP))
    return (errors_sorted_CP * grad_CP).sum(dim=1).mean()


def kl_divergence(mu: dict[str, torch.Tensor], logvar: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) averaged over every element of the six planes."""
    total, count = 0.0, 0
    for name in PLANE_NAMES:
        m, lv = mu[name].float(), logvar[name].float()
        total = total + (-0.5 * (1.0 + lv - m.square() - lv.exp())).sum()
        count += m.numel()
    return total / count


def vae_loss(logits_BKTXYZ: torch.Tensor, target_BTXYZ: torch.Tensor, mu: dict[str, torch.Tensor],
             logvar: dict[str, torch.Tensor], weights_K: torch.Tensor, beta: float = 0.0015,
             lovasz_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, parts)``: total = CE + lovasz_weight · Lovász + β · KL; parts (ce, lovasz, kl, total) detached."""
    if logits_BKTXYZ.dim() != target_BTXYZ.dim() + 1 or (
            logits_BKTXYZ.shape[:1] + logits_BKTXYZ.shape[2:] != target_BTXYZ.shape):
        raise ValueError(f"logits shape {tuple(logits_BKTXYZ.shape)} does not match target shape "
                         f"{tuple(target_BTXYZ.shape)}: expected logits (B, K, *target.shape[1:])")
    if weights_K.shape != (logits_BKTXYZ.shape[1],):
        raise ValueError(f"class weights have shape {tuple(weights_K.shape)}, "
                         f"expected ({logits_BKTXYZ.shape[1]},) = one per class")
    logits_BKTXYZ = logits_BKTXYZ.float()
    ce = weighted_cross_entropy(logits_BKTXYZ, target_BTXYZ, weights_K)
    lovasz = lovasz_softmax(logits_BKTXYZ.softmax(dim=1), target_BTXYZ)
    kl = kl_divergence(mu, logvar)
    total = ce + lovasz_weight * lovasz + beta * kl
    parts = {"ce": ce.detach(), "lovasz": lovasz.detach(), "kl": kl.detach(), "total": total.detach()}
    return total, parts
