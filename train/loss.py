"""The distillation loss: KL(teacher || student) per teacher head, at a temperature."""

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


def distillation_loss(
    student_logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    temperature: float,
    weights: dict[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(sum_t weights[t] * KL_t, {t: KL_t})``; weights are used as given, not normalised."""
    if set(student_logits) != set(targets):
        raise ValueError(f"heads {sorted(student_logits)} differ from targets {sorted(targets)}")
    per_teacher = {
        name: kl_to_student(targets[name], student_logits[name], temperature) for name in targets
    }
    total = sum(weights[name] * value for name, value in per_teacher.items())
    assert isinstance(total, torch.Tensor)
    return total, per_teacher
