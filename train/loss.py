"""The distillation loss, one term per teacher target, by the target's kind.

* logits: KL(teacher || student) at a temperature (Hinton et al. 2015; DistInit).
* embedding: the student head is a linear projection to the teacher's dimension, compared with
  the L2-normalised target by ``2 - 2 cos`` (UMT, InternVideo2) or by smooth L1 (MVD) on the
  normalised vectors scaled by ``sqrt(D)``, so each dimension has unit variance whatever ``D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_student(
    target: torch.Tensor, student_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over the batch of ``KL(p || softmax(z / T)) * T**2``.

    ``target`` (B, C) is the teacher distribution already at temperature T (the clip dataset
    tempers it); the T² factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al. 2015). Computed in float32 even under autocast, since log-probabilities of
    1000 classes lose too much in half precision.
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
    p = target.float()
    # xlogy: 0 * log 0 = 0 for classes the teacher rules out entirely.
    kl = (torch.xlogy(p, p) - p * log_q).sum(dim=1)  # (B,)
    return kl.mean() * temperature**2


def embedding_loss(target: torch.Tensor, projection: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the batch of the distance between the student's projection (B, D) and the
    unit-norm teacher embedding (B, D), both L2-normalised, in float32."""
    s = F.normalize(projection.float(), dim=1)
    t = F.normalize(target.float(), dim=1)
    if kind == "cosine":
        return (2.0 - 2.0 * (s * t).sum(dim=1)).mean()
    if kind == "smooth_l1":
        scale = target.shape[1] ** 0.5
        return F.smooth_l1_loss(s * scale, t * scale, reduction="none").sum(dim=1).mean() / scale
    raise ValueError(f"unknown embedding loss {kind!r}")


def distillation_loss(
    student_logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    temperature: float,
    weights: dict[str, float],
    kinds: dict[str, str] | None = None,
    embedding: str = "cosine",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(sum_t weights[t] * loss_t, {t: loss_t})``; weights are used as given, not normalised.
    ``kinds[t]`` is ``"logits"`` (KL, the default) or ``"embedding"`` (:func:`embedding_loss`
    of kind ``embedding``)."""
    if set(student_logits) != set(targets):
        raise ValueError(f"heads {sorted(student_logits)} differ from targets {sorted(targets)}")
    kinds = kinds or {}
    per_teacher = {
        name: (
            embedding_loss(targets[name], student_logits[name], embedding)
            if kinds.get(name, "logits") == "embedding"
            else kl_to_student(targets[name], student_logits[name], temperature)
        )
        for name in targets
    }
    total = sum(weights[name] * value for name, value in per_teacher.items())
    assert isinstance(total, torch.Tensor)
    return total, per_teacher
