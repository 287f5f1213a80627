"""RegularizedAdamW against torch.optim.AdamW, the hook path and hand-computed first steps."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from hf_soft_diamond import attach_regularizer, build_regularizer
from hf_soft_diamond.fused import compile_available
from hf_soft_diamond.optim import RegularizedAdamW


def _net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)


def _train(model, optimizer, lrs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = torch.randn(16, 6, generator=gen).to(dtype)
        y = torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


LRS = [0.05, 0.03, 0.04, 0.01, 0.02, 0.05]


def _max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(((pa - pb).abs().max() / pb.abs().max()).item() for pa, pb in zip(a.parameters(), b.parameters()))


def test_without_a_regularizer_it_is_torch_adamw_with_groups_and_a_schedule():
    a, b = _net(), _net()
    groups = lambda m: [  # noqa: E731
        {"params": [m[0].weight, m[2].weight], "weight_decay": 0.1},
        {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0, "betas": (0.8, 0.99), "lr_scale": 0.5},
    ]
    ours = RegularizedAdamW(groups(a), lr=0.05, eps=1e-6, fused_backend="eager")
    ref = torch.optim.AdamW(groups(b), lr=0.05, eps=1e-6, foreach=False)
    _train(a, ours, LRS)
    _train(b, ref, LRS)
    assert _max_rel_diff(a, b) < 1e-12
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[pa][key], ref.state[pb][key], rtol=1e-12, atol=1e-15)
        assert float(ours.state[pa]["step"]) == float(ref.state[pb]["step"]) == len(LRS)


CASES = {
    "l2 coupled": ("l2", dict(strength=0.2, mode="coupled")),
    "l2 decoupled": ("l2", dict(strength=0.2, mode="decoupled")),
    "l1 coupled": ("l1", dict(strength=0.01, mode="coupled")),
    "l1 decoupled": ("l1", dict(strength=0.5, mode="decoupled")),
    "lp coupled": ("lp", dict(strength=0.01, p=0.7, eps=1e-2)),
    "sas a0.5 coupled": ("sas", dict(strength=0.01, alpha=0.5, gamma=0.1, mode="coupled")),
    "sas a1.5 decoupled": ("sas", dict(strength=0.05, alpha=1.5, gamma=0.5, mode="decoupled")),
    "sas a0.5 table decoupled": ("sas", dict(strength=0.01, alpha=0.5, gamma=0.1, mode="decoupled",
                                             score_path="table")),
    "pwd p0.8": ("pwd", dict(strength=0.5, p=0.8)),
    "pwd p1.5 elastic": ("pwd", dict(strength=0.1, p=1.5, l2_strength=0.3)),
    "pwd p0.8 scheduled": ("pwd", dict(strength=0.5, p=0.8, p_schedule_steps=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_elementwise_regularizer_matches_adamw_plus_its_hooks(case):
    """The fused update equals torch's AdamW with the regularizer's step hooks (a separate
    implementation of the same step: extra passes around the optimizer), step for step,
    with a learning-rate schedule and an unregularized bias group."""
    name, kwargs = CASES[case]
    a, b = _net(), _net()
    reg_a = build_regularizer(name, fused_backend="eager", **kwargs)
    reg_b = build_regularizer(name, fused_backend="eager", **kwargs)
    ours = RegularizedAdamW(a.parameters(), reg_a, [a[0].weight, a[2].weight], lr=0.05, fused_backend="eager")
    ref = torch.optim.AdamW(b.parameters(), lr=0.05, weight_decay=0.0, foreach=False)
    attach_regularizer(ref, reg_b, [b[0].weight, b[2].weight])
    _train(a, ours, LRS)
    _train(b, ref, LRS)
    assert _max_rel_diff(a, b) < 1e-10
    assert reg_a.step == reg_b.step == len(LRS)
    assert ours.penalty() == pytest.approx(float(reg_b.penalty([b[0].weight, b[2].weight])), rel=1e-9)
    if name in ("pwd",) or kwargs.get("mode") == "decoupled" and name == "l1":
        # the sparse ones leave exact zeros in the same places
        assert torch.equal(a[0].weight == 0, b[0].weight == 0)


def _first_adam_step(w0, g, lr, eps):
    # at t = 1: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    return w0 - lr * g / (g.abs() + eps)


def test_pwd_first_step_is_the_methods_formula():
    """docs/methods.md §5.2, Adam form: w1 = w_hat * X / (X + p*lr*lambda), X = |w0|^(2-p)."""
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    w.data[0, :2] = 0.0
    w0 = w.detach().clone()
    g = torch.randn(5, 4, dtype=torch.float64)
    p, lam, lr, eps = 0.8, 0.3, 0.1, 1e-8
    opt = RegularizedAdamW([w], build_regularizer("pwd", strength=lam, p=p, fused_backend="eager"),
                           lr=lr, eps=eps, fused_backend="eager")
    w.grad = g.clone()
    opt.step()
    x = w0.abs() ** (2 - p)
    expect = _first_adam_step(w0, g, lr, eps) * x / (x + p * lr * lam)
    torch.testing.assert_close(w.detach(), expect, rtol=1e-12, atol=0)
    assert torch.all(w.detach()[0, :2] == 0)  # zero is absorbing, whatever the gradient
    w.grad = torch.ones_like(w)
    opt.step()
    assert torch.all(w.detach()[0, :2] == 0)


def test_sas_first_steps_use_the_closed_form_scores():
    """alpha = 1 (Cauchy, psi = -2w/(gamma^2 + w^2)) decoupled, alpha = 2 (Gaussian of variance
    2 gamma, psi = -w/(2 gamma)) coupled: one step against the closed forms (docs/methods.md §3.4-3.5)."""
    torch.manual_seed(4)
    w0 = torch.randn(3, 7, dtype=torch.float64)
    g = torch.randn(3, 7, dtype=torch.float64)
    lr, lam, gamma, eps = 0.05, 0.2, 0.3, 1e-8

    w = nn.Parameter(w0.clone())
    opt = RegularizedAdamW([w], build_regularizer("sas", strength=lam, alpha=1.0, gamma=gamma, mode="decoupled",
                                                  fused_backend="eager"), lr=lr, eps=eps, fused_backend="eager")
    w.grad = g.clone()
    opt.step()
    # decoupled: the pull at the optimizer's result w_hat, never across zero
    w_hat = _first_adam_step(w0, g, lr, eps)
    pulled = w_hat + lr * lam * (-2 * w_hat / (gamma**2 + w_hat**2))
    expected = torch.where(pulled * w_hat < 0, torch.zeros_like(pulled), pulled)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-15)

    w = nn.Parameter(w0.clone())
    opt = RegularizedAdamW([w], build_regularizer("sas", strength=lam, alpha=2.0, gamma=gamma, mode="coupled",
                                                  fused_backend="eager"), lr=lr, eps=eps, fused_backend="eager")
    w.grad = g.clone()
    opt.step()
    g_total = g - lam * (-w0 / (2 * gamma))
    torch.testing.assert_close(w.detach(), _first_adam_step(w0, g_total, lr, eps), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(w.grad, g)  # the coupled term is not written into .grad


def test_resume_from_a_state_dict_continues_exactly_and_torch_adamw_reads_it():
    reg = lambda: build_regularizer("pwd", strength=0.5, p=0.8, p_schedule_steps=5, fused_backend="eager")  # noqa: E731
    whole_net = _net()
    whole = RegularizedAdamW(whole_net.parameters(), reg(), lr=0.05, fused_backend="eager")
    _train(whole_net, whole, LRS[:3])
    _train(whole_net, whole, LRS[3:], seed=2)

    net = _net()
    first = RegularizedAdamW(net.parameters(), reg(), lr=0.05, fused_backend="eager")
    _train(net, first, LRS[:3])
    saved = copy.deepcopy(first.state_dict())
    assert saved["hf_soft_diamond"]["step"] == 3
    second = RegularizedAdamW(net.parameters(), reg(), lr=0.05, fused_backend="eager")
    second.load_state_dict(saved)
    assert second.regularizer.step == 3 and second.regularizer.current_p() == pytest.approx(2.0 - 1.2 * 3 / 5)
    _train(net, second, LRS[3:], seed=2)
    assert _max_rel_diff(net, whole_net) == 0.0

    plain = torch.optim.AdamW(_net().parameters(), lr=0.05)
    plain.load_state_dict({k: v for k, v in saved.items() if k != "hf_soft_diamond"})
    assert plain.state_dict()["state"][0]["exp_avg"].shape == (12, 6)


def test_parameters_without_gradients_are_left_alone():
    net = _net()
    frozen = net[2].weight.detach().clone()
    opt = RegularizedAdamW(net.parameters(), build_regularizer("l1", strength=0.1, mode="decoupled"),
                           lr=0.1, fused_backend="eager")
    net(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    net[2].weight.grad = None
    opt.step()
    assert torch.equal(net[2].weight.detach(), frozen)
    assert net[2].weight not in opt.state


def test_bad_settings_fail_before_training_and_name_the_argument():
    net = _net()
    with pytest.raises(ValueError, match="`lr`"):
        RegularizedAdamW(net.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match=r"`betas` must be two numbers in \[0, 1\)"):
        RegularizedAdamW(net.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="`eps`"):
        RegularizedAdamW(net.parameters(), eps=0.0)
    with pytest.raises(ValueError, match="`weight_decay`"):
        RegularizedAdamW([{"params": net.parameters(), "weight_decay": -0.1}])
    with pytest.raises(ValueError, match="not elementwise.*attach_regularizer"):
        RegularizedAdamW(net.parameters(), build_regularizer("stable_rank", strength=0.1))
    with pytest.raises(ValueError, match="not in the optimizer"):
        RegularizedAdamW(net[0].parameters(), build_regularizer("l1", strength=0.1), [net[2].weight])
    with pytest.raises(ValueError, match="`reg_on_nonfinite`"):
        RegularizedAdamW(net.parameters(), on_nonfinite="ignore")
    with pytest.warns(UserWarning, match=r"also applies weight_decay=\[0.1\] to regularized parameters"):
        RegularizedAdamW(net.parameters(), build_regularizer("l1", strength=0.1), [net[0].weight], weight_decay=0.1)


def test_non_finite_weights_are_reported_by_name():
    net = _net()
    opt = RegularizedAdamW(net.parameters(), build_regularizer("sas", strength=0.01, alpha=1.5),
                           [("first.weight", net[0].weight)], fused_backend="eager")
    net(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    net[0].weight.grad[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="first.weight"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.on_nonfinite = "warn"
        with pytest.raises(RuntimeWarning, match="first.weight"):
            opt.step()


@pytest.mark.skipif(not compile_available("cpu"), reason="needs a C++ compiler for inductor")
@pytest.mark.parametrize("case", ["sas a0.5 coupled", "pwd p0.8 scheduled"])
def test_the_compiled_update_matches_the_eager_one(case):
    name, kwargs = CASES[case]
    a, b = _net(torch.float32), _net(torch.float32)
    ours = RegularizedAdamW(a.parameters(), build_regularizer(name, **kwargs), [a[0].weight, a[2].weight],
                            lr=0.05, weight_decay=0.01, fused_backend="compile")
    ref = RegularizedAdamW(b.parameters(), build_regularizer(name, fused_backend="eager", **kwargs),
                           [b[0].weight, b[2].weight], lr=0.05, weight_decay=0.01, fused_backend="eager")
    _train(a, ours, LRS)
    _train(b, ref, LRS)
    assert not any(k._compile_failed for k in ours._kernels.values())
    assert _max_rel_diff(a, b) < 1e-4


def test_auto_backend_is_decided_once_for_the_whole_optimizer(monkeypatch):
    """The unregularized rest of a large model (biases, norms: far below the compile threshold on
    their own) is compiled with the regularized weights, not stepped eagerly tensor by tensor."""
    import hf_soft_diamond.optim as optim_module
    from hf_soft_diamond.fused import COMPILE_MIN_NUMEL

    monkeypatch.setattr(optim_module, "compile_available", lambda device: True)  # the decision, not the compiler
    big = torch.nn.Parameter(torch.zeros(COMPILE_MIN_NUMEL))
    small = torch.nn.Parameter(torch.zeros(10))
    opt = RegularizedAdamW([big, small], build_regularizer("l1", strength=0.1), [("big", big)], lr=1e-3)
    assert opt._kernel_backend() == "compile"
    tiny = RegularizedAdamW([small], build_regularizer("l1", strength=0.1), [("small", small)], lr=1e-3)
    assert tiny._kernel_backend() == "eager"
    forced = RegularizedAdamW([small], None, lr=1e-3, fused_backend="compile")
    assert forced._kernel_backend() == "compile"
