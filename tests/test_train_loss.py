from __future__ import annotations

import math

import pytest
import torch

from distinit.train.loop import lr_factor
from distinit.train.loss import distillation_loss, kl_to_student


def test_kl_matches_a_hand_computed_value() -> None:
    # p = (0.5, 0.5, 0); student logits (0, 0, ln 2) -> q = (1/4, 1/4, 1/2).
    # KL = 0.5 ln(0.5/0.25) * 2 = ln 2 (the zero-probability class contributes nothing).
    p = torch.tensor([[0.5, 0.5, 0.0]])
    z = torch.tensor([[0.0, 0.0, math.log(2.0)]])
    assert kl_to_student(p, z, 1.0).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_temperature_divides_logits_and_scales_by_t_squared() -> None:
    # At T=2 the logits (0, 2 ln 2) become (0, ln 2): q = (1/3, 2/3). With p = (1/2, 1/2):
    # KL = 0.5 ln(1.5) + 0.5 ln(0.75) = 0.5 ln(1.125); times T² = 4.
    p = torch.tensor([[0.5, 0.5]])
    z = torch.tensor([[0.0, 2 * math.log(2.0)]])
    assert kl_to_student(p, z, 2.0).item() == pytest.approx(2 * math.log(1.125), rel=1e-6)


def test_batch_mean_and_teacher_weights() -> None:
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    z = torch.zeros(2, 2)  # q uniform
    # rows: ln 2 and 0 -> batch mean ln2 / 2
    a = kl_to_student(p, z, 1.0).item()
    assert a == pytest.approx(math.log(2.0) / 2, rel=1e-6)
    total, per = distillation_loss(
        {"o": z, "s": z}, {"o": p, "s": torch.full((2, 2), 0.5)}, 1.0, {"o": 3.0, "s": 0.5}
    )
    assert per["s"].item() == pytest.approx(0.0, abs=1e-7)
    assert total.item() == pytest.approx(3.0 * a, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss({"o": z}, {"s": p}, 1.0, {"o": 1.0, "s": 1.0})


def test_loss_gradient_is_student_minus_teacher() -> None:
    # d KL / d z = (q - p) / T per sample, times T² and 1/B.
    p = torch.tensor([[0.2, 0.8]])
    z = torch.tensor([[0.3, -0.1]], requires_grad=True)
    kl_to_student(p, z, 2.0).backward()
    q = torch.softmax(z.detach() / 2.0, dim=1)
    torch.testing.assert_close(z.grad, (q - p) * 2.0)


def test_lr_schedule_warmup_cosine_and_step() -> None:
    assert [lr_factor(s, 10, 3, "cosine") for s in range(3)] == [0.25, 0.5, 0.75]
    assert lr_factor(3, 10, 3, "cosine") == pytest.approx(1.0)
    assert lr_factor(3 + 7 // 2, 10, 3, "cosine") < 0.7
    assert lr_factor(9, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert [lr_factor(s, 8, 0, "step") for s in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
