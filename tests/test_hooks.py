"""Optimizer wiring: per-group lr, skipped steps, non-finite values, removal, selection."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hf_soft_diamond import attach_regularizer, build_regularizer, select_parameters


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3, bias=False)
        self.conv = nn.Conv1d(2, 4, 3)

    def forward(self, x):
        return self.head(self.norm(self.proj(self.embed(x).mean(1))))


def test_default_selection_follows_the_trainer_rule_plus_ndim():
    names = [n for n, _ in select_parameters(TinyNet())]
    assert names == ["embed.weight", "proj.weight", "head.weight", "conv.weight"]
    names = [n for n, _ in select_parameters(TinyNet(), include_embeddings=False)]
    assert names == ["proj.weight", "head.weight", "conv.weight"]


def test_include_replaces_and_exclude_removes():
    net = TinyNet()
    assert [n for n, _ in select_parameters(net, include=[r"^proj\."])] == ["proj.weight", "proj.bias"]
    assert [n for n, _ in select_parameters(net, exclude=["conv", "embed"])] == ["proj.weight", "head.weight"]
    with pytest.raises(ValueError, match="`reg_include`"):
        select_parameters(net, include=["("])


def test_norm_modules_are_excluded_even_with_unusual_names():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.GroupNorm(2, 4)
            self.w = nn.Linear(4, 4)

    net = Odd()
    net.gate.weight = nn.Parameter(torch.ones(4, 1))  # 2-D on purpose
    assert [n for n, _ in select_parameters(net)] == ["w.weight"]


def test_each_param_group_uses_its_own_scheduled_lr():
    a = nn.Parameter(torch.ones(3, dtype=torch.float64))
    b = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # scheduled lr = half the base
    attach_regularizer(opt, build_regularizer("l2", strength=2.0, mode="decoupled", fused_backend="eager"),
                       [("a", a), ("b", b)])
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    sched.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 1 - 0.05 * 2.0, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.full((3,), 1 - 0.005 * 2.0, dtype=torch.float64))


def test_skipped_amp_step_does_not_regularize():
    w = nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([w], lr=0.1)
    reg = build_regularizer("pwd", strength=1.0, p=0.5, fused_backend="eager")
    attach_regularizer(opt, reg, [w])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    loss = (w * torch.tensor([1.0, float("inf"), 1.0, 1.0])).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)  # inf gradient: the step is skipped
    scaler.update()
    assert torch.equal(w.detach(), torch.ones(4))
    assert reg.step == 0
    opt.zero_grad()
    scaler.scale(w.sum()).backward()
    scaler.step(opt)
    assert reg.step == 1
    x = 1.0 ** 1.5
    expected = (1 - 0.1) * x / (x + 0.5 * 0.1 * 1.0)
    torch.testing.assert_close(w.detach(), torch.full((4,), expected))


@pytest.mark.parametrize("name,mode", [("sas", "coupled"), ("l1", "decoupled"), ("pwd", "decoupled")])
def test_non_finite_values_are_reported_with_the_parameter_name(name, mode):
    good = nn.Parameter(torch.ones(3))
    bad = nn.Parameter(torch.tensor([1.0, float("nan"), 2.0]))
    opt = torch.optim.SGD([good, bad], lr=0.1)
    attach_regularizer(opt, build_regularizer(name, strength=0.1, mode=mode, fused_backend="eager"),
                       [("layer.good", good), ("layer.bad", bad)])
    good.grad, bad.grad = torch.zeros(3), torch.zeros(3)
    with pytest.raises(FloatingPointError, match=r"\[.layer\.bad.\]"):
        opt.step()


def test_non_finite_can_warn_instead():
    bad = nn.Parameter(torch.tensor([float("inf")]))
    opt = torch.optim.SGD([bad], lr=0.1)
    attach_regularizer(opt, build_regularizer("l2", strength=0.1, fused_backend="eager"), [bad], on_nonfinite="warn")
    bad.grad = torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()


def test_remove_restores_the_plain_optimizer_and_missing_params_are_refused():
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    handle = attach_regularizer(opt, build_regularizer("l2", strength=1.0, mode="decoupled"), [w])
    handle.remove()
    w.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(w.detach(), torch.ones(2))
    other = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="not in the optimizer"):
        attach_regularizer(opt, build_regularizer("l2", strength=1.0), [("other", other)])


def test_double_decay_is_warned():
    w = nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.01)
    with pytest.warns(UserWarning, match="also applies weight_decay"):
        attach_regularizer(opt, build_regularizer("sas", strength=1.0), [w])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach_regularizer(torch.optim.AdamW([w], lr=0.1, weight_decay=0.0), build_regularizer("sas", strength=1.0),
                           [w])


def test_attach_to_a_model_uses_the_default_selection():
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = attach_regularizer(opt, build_regularizer("l1", strength=0.1), net)
    assert handle.names == ["embed.weight", "proj.weight", "head.weight", "conv.weight"]
    expected = 0.1 * sum(p.detach().abs().sum().item() for p in handle.params)
    assert handle.penalty() == pytest.approx(expected, rel=1e-6)


def test_coupled_grads_skip_params_without_grad():
    a = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a, b], lr=0.1)
    attach_regularizer(opt, build_regularizer("l2", strength=1.0, fused_backend="eager"), [a, b])
    a.grad = torch.zeros(2)
    opt.step()
    assert b.grad is None and torch.equal(b.detach(), torch.ones(2))
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))
