"""Top-1/top-k accuracy, agreement and user metrics on logits whose answers are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convopt.errors import ConvoptError, InputShapeError
from convopt.verify import evaluate_accuracy, predict_logits


class Permuted(nn.Module):
    """Returns its input (logits) with two classes swapped."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        order = list(range(x.shape[1]))
        order[self.a], order[self.b] = self.b, self.a
        return x[:, order]


def test_top1_topk_agreement_and_metric():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0, -1],   # label 0: top-1 hit
                           [5.0, 4, 3, 2, 1, 0, -1],   # label 4: top-5 hit only
                           [5.0, 4, 3, 2, 1, 0, -1],   # label 6: miss
                           [0.0, 1, 9, 2, 3, 4, 5]])   # label 2: top-1 hit  # fmt: skip
    labels = torch.tensor([0, 4, 6, 2])
    report = evaluate_accuracy(nn.Identity(), Permuted(0, 1), logits, labels, batch_size=3,
                               metric=lambda z, y: float((z.argmax(1) == y).sum()), metric_name="hits")  # fmt: skip
    assert report.k == 5 and report.num_samples == 4
    assert (report.reference.top1, report.reference.topk) == (0.5, 0.75)
    assert (report.candidate.top1, report.candidate.topk) == (0.25, 0.75)  # rows 0-2 now predict class 1
    assert report.agreement == 0.25 and report.top1_drop == pytest.approx(25.0)
    assert report.reference.metric == 2.0 and report.candidate.metric == 1.0
    assert report.to_dict()["metric_name"] == "hits" and report.to_dict()["candidate"]["top1"] == 0.25


def test_k_is_capped_by_the_number_of_classes():
    report = evaluate_accuracy(nn.Identity(), nn.Identity(), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert report.k == 3 and report.reference.topk == 1.0 and report.agreement == 1.0


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ConvoptError, match="labels range over 0..7 but the model has 3 outputs"):
        evaluate_accuracy(nn.Identity(), nn.Identity(), torch.randn(2, 3), torch.tensor([0, 7]))
    with pytest.raises(ConvoptError, match="3 inputs but 2 labels"):
        evaluate_accuracy(nn.Identity(), nn.Identity(), torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(InputShapeError, match=r"rejects inputs of shape \(2, 5\)"):
        predict_logits(nn.Linear(3, 2), torch.randn(2, 5))
