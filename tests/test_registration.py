"""A method registered from outside the package is a first-class citizen: one class and one
``register_regularizer`` call give it validation, the Trainer, the natural mode, and a card
that cites it (issue 18: adding a method is one module)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from conftest import TinySeq2SeqData, base_args, tiny_marian
from hf_soft_diamond import attach_regularizer, available_regularizers, build_regularizer
from hf_soft_diamond.regularizers import base as registry
from hf_soft_diamond.regularizers.base import Citation, ElementwiseTerms, Param, Regularizer, register_regularizer


def _cauchy_grad(w: Tensor, coef: Tensor, inv_s2: Tensor) -> Tensor:
    # -d/dw log(1 / (1 + w^2/s^2)) = 2 w / (s^2 + w^2) = 2 w inv_s2 / (1 + w^2 inv_s2), times strength
    return coef * 2.0 * w * inv_s2 / (1.0 + w * w * inv_s2)


def _cauchy_pre(w: Tensor, step: Tensor, inv_s2: Tensor) -> Tensor:
    return w - _cauchy_grad(w, step, inv_s2)


class CauchyToy(Regularizer):
    """A Cauchy prior ``log(1 + w^2/s^2)`` written the way a user would, outside the package."""

    name = "cauchy_toy"
    params = (Param("scale", "toy_scale", 0.5, "Cauchy scale s > 0.", low=0.0, low_open=True),)
    citation = Citation(title="toy Cauchy prior", reference="A. User, A Toy Cauchy Prior, 2026",
                        bibtex="@misc{user2026toy,\n  title={A Toy Cauchy Prior},\n  author={User, A.},\n"
                               "  year={2026}\n}")
    density_family = "laplace"

    def __init__(self, strength: float = 0.0, mode: str | None = None, scale: float = 0.5,
                 fused_backend: str = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._set_params(scale=scale)

    def penalty_terms(self, params):
        return torch.stack([torch.log1p((w.detach().double() / self.scale) ** 2).sum() for w in params]).sum()

    def elementwise_terms(self, lr, mode=None):
        inv_s2 = 1.0 / self.scale ** 2
        if self._mode_of(mode) == "coupled":
            return ElementwiseTerms(grad=_cauchy_grad, grad_scalars=(self.strength, inv_s2))
        return ElementwiseTerms(pre=_cauchy_pre, pre_scalars=(lr * self.strength, inv_s2))


@pytest.fixture
def toy():
    register_regularizer(CauchyToy)
    yield CauchyToy
    registry._REGISTRY.pop(CauchyToy.name, None)


def test_it_is_registered_and_its_parameters_are_validated(toy):
    assert "cauchy_toy" in available_regularizers()
    assert build_regularizer("cauchy_toy", strength=0.1, scale=2.0).scale == 2.0
    with pytest.raises(ValueError, match="toy_scale"):
        build_regularizer("cauchy_toy", strength=0.1, scale=-1.0)


def test_one_sgd_step_follows_the_closed_form_gradient(toy):
    """Zero data gradient, SGD lr 0.1, coupled by default under SGD: w -= lr * strength * 2w/(s^2+w^2)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    w0 = model[0].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = attach_regularizer(optimizer, build_regularizer("cauchy_toy", strength=0.3, scale=0.5), model)
    assert handle.regularizer.mode == "coupled"
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    expected = w0 - 0.1 * 0.3 * 2 * w0 / (0.25 + w0 ** 2)
    torch.testing.assert_close(model[0].weight.detach(), expected, rtol=1e-6, atol=1e-7)
    w1 = model[0].weight.detach().double()
    assert handle.penalty() == pytest.approx(0.3 * float(torch.log1p((w1 / 0.5) ** 2).sum()), rel=1e-6)


def test_the_trainer_runs_it_decoupled_under_adamw_and_the_card_cites_it(toy, tmp_path):
    from hf_soft_diamond import SoftDiamondSeq2SeqTrainer, SoftDiamondSeq2SeqTrainingArguments
    from hf_soft_diamond.model_card import render_model_card

    with pytest.raises(ValueError, match="toy_scale|scale"):
        SoftDiamondSeq2SeqTrainingArguments(**base_args(tmp_path / "bad", regularizer="cauchy_toy", reg_strength=0.1,
                                                        reg_kwargs={"scale": 0.0}))
    args = SoftDiamondSeq2SeqTrainingArguments(**base_args(tmp_path / "run", regularizer="cauchy_toy",
                                                           reg_strength=0.1, reg_kwargs={"scale": 0.25},
                                                           optim="adamw_torch", learning_rate=1e-2))
    trainer = SoftDiamondSeq2SeqTrainer(model=tiny_marian(seed=0), args=args, train_dataset=TinySeq2SeqData(n=24))
    trainer.train()
    report = trainer.regularizer_report()
    assert report["hparams"]["regularizer"] == "cauchy_toy" and report["hparams"]["reg_mode"] == "decoupled"
    assert report["optimizer_steps"] == 3 and math.isfinite(report["penalty"]) and report["penalty"] > 0
    card = render_model_card({"task": "translation", "test_bleu": 1.0, "dataset_name": "toy",
                              "regularizer": report["hparams"]}, model_name="toy")
    text = str(card)
    assert "toy Cauchy prior" in text and "user2026toy" in text and "adigun2024softdiamond" not in text
