"""Padding-only convolution taps, against the gradient they receive (exactly 0 for every input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hf_soft_diamond.padding_taps import live_sparsity, padding_only_taps


def _zero_gradient_taps(conv: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Taps whose weight gradient is 0 for a strictly positive input: exactly the taps that never
    read a real element (each real element read adds a positive amount)."""
    conv.zero_grad()
    conv(torch.rand(shape) + 0.5).sum().backward()
    return conv.weight.grad == 0


@pytest.mark.parametrize("dims, size, kernel, stride, padding, dilation", [
    (1, 1, 3, 1, 1, 1), (1, 2, 3, 2, 1, 1), (1, 5, 5, 3, 2, 1), (1, 7, 3, 1, 3, 2), (1, 4, 3, 1, "same", 2),
    (1, 6, 3, 1, "valid", 1), (2, 2, 3, 2, 1, 1), (2, 3, 3, 1, 2, 1), (3, 2, 3, 1, 1, 1),
])
def test_masks_are_the_taps_no_input_moves(dims, size, kernel, stride, padding, dilation):
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv = conv_cls(2, 4, kernel, stride=1 if padding == "same" else stride, padding=padding, dilation=dilation)
    shape = (3, 2, *([size] * dims))
    masks = padding_only_taps(conv, torch.zeros(1, *shape[1:]))
    assert set(masks) == {"weight"} and masks["weight"].shape == conv.weight.shape
    assert torch.equal(masks["weight"], _zero_gradient_taps(conv, shape))


def test_other_padding_modes_read_real_values_and_have_no_dead_taps():
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
    assert padding_only_taps(conv, torch.zeros(1, 1, 2, 2)) == {}


def test_the_small_resnet_on_28x28_images_has_56_percent_dead_weights():
    """Its last stage runs at 2x2 -> 1x1: 5/9 of the stride-2 conv's 3x3 taps and 8/9 of the next
    one's see only padding, 688,128 of 1,226,784 regularized weights; a backward pass agrees."""
    from hf_soft_diamond.regularizers import select_parameters
    from hf_soft_diamond.tasks.models import build_image_model

    model = build_image_model("resnet", "small", num_labels=10, image_size=28, num_channels=1, dropout=0.0,
                              batch_norm=True, id2label={i: str(i) for i in range(10)}, seed=0)
    masks = padding_only_taps(model, torch.zeros(1, 1, 28, 28))
    named = select_parameters(model)
    total = sum(p.numel() for _, p in named)
    dead = sum(int(masks[n].sum()) for n, _ in named if n in masks)
    assert (dead, total) == (589824 * 8 // 9 + 294912 * 5 // 9, 1226784)
    model.train()
    model(torch.randn(16, 1, 28, 28)).logits.square().sum().backward()
    for name, param in named:
        if name in masks:
            assert (param.grad[masks[name]] == 0).all(), name
            assert (param.grad[~masks[name]] != 0).float().mean() > 0.99, name


def test_live_sparsity_leaves_the_dead_taps_out():
    w = torch.tensor([[0.0, 0.5, 1e-4], [2.0, 0.0, 0.0]])
    dead = {"a": torch.tensor([[True, False, False], [False, False, True]])}
    other = torch.tensor([0.0, 3.0])
    fractions, live = live_sparsity([("a", w), ("b", other)], dead, (1e-8, 1e-3))
    kept = np.array([0.5, 1e-4, 2.0, 0.0, 0.0, 3.0])  # w without its two dead entries, then b
    assert live == kept.size
    assert fractions == {"1e-08": pytest.approx((kept <= 1e-8).mean()), "1e-03": pytest.approx((kept <= 1e-3).mean())}


def test_a_model_mostly_made_of_padding_only_taps_is_warned_about():
    """The small ResNet at 28x28 (688,128 of its 1,226,784 conv/linear weights padding-only, counted by
    hand above) warns with those counts; at 224x224 nothing of it is padding-only, nor of a ViT."""
    import warnings

    from hf_soft_diamond.padding_taps import warn_if_mostly_padding
    from hf_soft_diamond.tasks.models import build_image_model

    small = build_image_model("resnet", "small", num_labels=10, image_size=28, num_channels=1, seed=0)
    with pytest.warns(UserWarning, match=r"688,128 of the model's 1,226,784 .*\(56\.1%\).*input size 28x28"):
        assert warn_if_mostly_padding(small, torch.zeros(1, 1, 28, 28)) == pytest.approx(688128 / 1226784)
    vit = build_image_model("vit", "tiny", num_labels=10, image_size=8, num_channels=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_mostly_padding(small, torch.zeros(1, 1, 224, 224)) == 0.0
        assert warn_if_mostly_padding(vit, torch.zeros(1, 1, 8, 8)) == 0.0
        assert warn_if_mostly_padding(small, torch.zeros(1, 1, 28, 28), share=0.6) == pytest.approx(0.5609, abs=1e-4)
    with pytest.raises(ValueError, match="`share` must be in \\[0, 1\\)"):
        warn_if_mostly_padding(vit, torch.zeros(1, 1, 8, 8), share=1.0)


def test_padding_only_among_keeps_the_named_weights_with_a_dead_tap():
    """The 28x28 ResNet: only its last stage's two 3x3 convolutions have dead taps (the hand count
    above); a name outside the set is left out even when dead."""
    from hf_soft_diamond.padding_taps import padding_only_among
    from hf_soft_diamond.tasks.models import build_image_model

    model = build_image_model("resnet", "small", num_labels=10, image_size=28, num_channels=1, seed=0)
    every = padding_only_taps(model, torch.zeros(1, 1, 28, 28))
    with_dead = sorted(n for n, m in every.items() if m.any())
    got = padding_only_among(model, torch.zeros(1, 1, 28, 28), list(every))
    assert sorted(got) == with_dead and len(with_dead) == 2 < len(every)
    assert sum(int(m.sum()) for m in got.values()) == 589824 * 8 // 9 + 294912 * 5 // 9
    assert set(padding_only_among(model, torch.zeros(1, 1, 28, 28), with_dead[1:])) == set(with_dead[1:])
