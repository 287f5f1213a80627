"""Which mode a prior runs in follows the optimizer (coupled priors under Adam are normalised away).

The behaviour that motivates it, measured directly: with a zero data gradient, one AdamW step
(lr 0.1) with an SaS prior (lambda 1e-4) added to the gradient moves every weight by ~lr = 0.1,
because Adam divides the prior's gradient by its own RMS. Decoupled, the weight moves by
lr * lambda * |psi(w)|, as AdamW's decay moves it by lr * lambda * |w|. The references here are
scipy's SaS density (finite differences of its log) and the closed-form Adam step.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy import stats

from hf_soft_diamond import attach_regularizer, build_regularizer
from hf_soft_diamond.optim import RegularizedAdamW
from hf_soft_diamond.regularizers import natural_mode, optimizer_family

LR, LAM, ALPHA, GAMMA = 0.1, 1e-4, 1.5, 0.5
W0 = [-2.0, -0.7, -0.05, 0.03, 0.4, 1.3, 3.0]


def _scipy_score(w: np.ndarray) -> np.ndarray:
    """d/dw log f by central differences of scipy's levy_stable log-density (scale gamma^(1/alpha))."""
    dist = stats.levy_stable(ALPHA, 0.0, scale=GAMMA ** (1.0 / ALPHA))
    h = 1e-4
    return (dist.logpdf(w + h) - dist.logpdf(w - h)) / (2 * h)


def _one_step(optimizer_cls, mode, **opt_kwargs) -> tuple[torch.Tensor, torch.nn.Parameter, object]:
    w = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64).reshape(1, -1))
    opt = optimizer_cls([w], lr=LR, **opt_kwargs)
    prior = build_regularizer("sas", strength=LAM, alpha=ALPHA, gamma=GAMMA, mode=mode, fused_backend="eager")
    attach_regularizer(opt, prior, [("w", w)])
    w.grad = torch.zeros_like(w)  # no data gradient: only the prior acts
    before = w.detach().clone()
    opt.step()
    return (w.detach() - before).flatten(), w, prior


def test_default_mode_under_adamw_moves_weights_by_lr_lambda_psi():
    delta, _, prior = _one_step(torch.optim.AdamW, None, weight_decay=0.0)
    assert prior.mode == "decoupled"
    expected = LR * LAM * _scipy_score(np.array(W0))
    np.testing.assert_allclose(delta.numpy(), expected, rtol=2e-3, atol=1e-12)
    assert delta.abs().max() < 1e-3 * LR  # nowhere near lr


def test_explicit_coupled_under_adamw_moves_by_lr_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_soft_diamond.hooks"):
        delta, _, prior = _one_step(torch.optim.AdamW, "coupled", weight_decay=0.0)
    assert prior.mode == "coupled"
    # Adam's first step is -lr * g / (|g| + eps) with g = -lambda psi: ~lr * sign(psi), towards 0 here,
    # whatever lambda is
    g = -LAM * _scipy_score(np.array(W0))
    np.testing.assert_allclose(delta.numpy(), -LR * g / (np.abs(g) + 1e-8), rtol=1e-3)
    assert (delta.abs() > 0.99 * LR).all()
    warnings = [r for r in caplog.records if "normalises each coordinate" in r.getMessage()]
    assert len(warnings) == 1


def test_default_mode_under_sgd_is_the_papers_coupled_form():
    delta, _, prior = _one_step(torch.optim.SGD, None)
    assert prior.mode == "coupled"
    # SGD: w -= lr * (-lambda psi) -- the same move as the decoupled step at this first step
    np.testing.assert_allclose(delta.numpy(), LR * LAM * _scipy_score(np.array(W0)), rtol=2e-3, atol=1e-12)


def test_regularized_adamw_resolves_to_decoupled():
    w = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64).reshape(1, -1))
    prior = build_regularizer("sas", strength=LAM, alpha=ALPHA, gamma=GAMMA, fused_backend="eager")
    opt = RegularizedAdamW([w], prior, [("w", w)], lr=LR, fused_backend="eager")
    assert prior.mode == "decoupled"
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    np.testing.assert_allclose((w.detach() - before).flatten().numpy(), LR * LAM * _scipy_score(np.array(W0)),
                               rtol=2e-3, atol=1e-12)


@pytest.mark.parametrize("optimizer, family", [
    (torch.optim.SGD, "sgd"), (torch.optim.Adam, "adaptive"), (torch.optim.AdamW, "adaptive"),
    (torch.optim.RMSprop, "adaptive"), (torch.optim.Adagrad, "adaptive"), (RegularizedAdamW, "adaptive"),
    ("sgd", "sgd"), ("adamw_torch_fused", "adaptive"), ("adafactor", "adaptive"), ("lion_32bit", "adaptive"),
])
def test_optimizer_family(optimizer, family):
    assert optimizer_family(optimizer) == family


def test_every_regularizer_with_a_decoupled_form_takes_it_under_adam():
    from hf_soft_diamond.regularizers import available_regularizers, get_regularizer_class

    for name in available_regularizers():
        cls = get_regularizer_class(name)
        assert natural_mode(name, torch.optim.AdamW) == ("decoupled" if "decoupled" in cls.modes else cls.modes[0])


@pytest.mark.parametrize("name, kwargs", [("lp", {"p": 0.7, "eps": 1e-2}), ("stable_rank", {"refresh_every": 1})])
def test_generic_decoupled_form_is_a_gradient_step_on_the_penalty(name, kwargs):
    """Decoupled lp / spectral: w <- w - lr * lambda * dR/dw, with dR/dw by autograd-free finite differences."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 5, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.AdamW([w], lr=LR, weight_decay=0.0)
    prior = build_regularizer(name, strength=0.05, fused_backend="eager", **kwargs)
    attach_regularizer(opt, prior, [("w", w)])
    w.grad = torch.zeros_like(w)
    opt.step()
    assert prior.mode == "decoupled"
    # central finite differences of strength * R at w0
    reference = build_regularizer(name, strength=0.05, fused_backend="eager", **kwargs)
    grad = torch.zeros_like(w0)
    h = 1e-6
    for idx in np.ndindex(*w0.shape):
        plus, minus = w0.clone(), w0.clone()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (float(reference.penalty([plus])) - float(reference.penalty([minus]))) / (2 * h)
    torch.testing.assert_close(w.detach(), w0 - LR * grad, rtol=0, atol=1e-7)
    assert math.isfinite(float(prior.penalty([w])))
