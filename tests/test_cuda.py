"""On a GPU: the library's guarantees hold on a CUDA device (issue 20).

Every test runs a computation on the device and compares it with an *independent*
reference: the same computation on the CPU (float32, eager kernels) and/or in float64
on the CPU, never the device's own output on another path. What is checked:

* the SaS score and log-density (``sas_score``, ``sas_log_pdf``, the table and the fast
  readers of :class:`~hf_soft_diamond.priors.sas.SasTable`) over |w| from 0 through
  subnormal to the top of the float32 range equal the CPU's to float32 rounding;
* every elementwise regularizer (those whose ``elementwise_terms(lr)`` is not ``None``,
  found by iterating :func:`~hf_soft_diamond.available_regularizers`), in each of its
  modes, applied by the step hooks around SGD (momentum) and AdamW, and fused into
  :class:`~hf_soft_diamond.optim.RegularizedAdamW`, with the eager and the compiled
  (Triton) kernels, moves the weights as on the CPU;
* under the Trainer with ``bf16=True`` / ``fp16=True`` the prior acts on the float32
  master weights and the unscaled gradients (each executed step equals a float64
  reference computed from the weights and gradients the optimizer saw), and an fp16 step
  skipped by the gradient scaler is skipped by the prior too;
* the spectral regularizers (``weighted_alpha``, ``stable_rank``) refresh on the device
  and give the CPU's per-step gradients;
* a checkpoint written on the GPU resumes on the CPU and back (optimizer state with the
  regularizer's ``hf_soft_diamond`` entry), landing on the uninterrupted run's weights.

Conventions. ``DEVICE`` is ``cuda`` (the current CUDA device). "Float32 rounding" means
relative differences of a few ulp (``rtol`` 4e-6, 32 ulp at most) and, for values below
the normal float32 range, an absolute ``2 * finfo(float32).tiny``. Reference data
(weights, gradients, batches) are drawn on the CPU in float64 from fixed seeds and cast,
so every device starts from the same numbers.

The module is marked ``cuda`` (``pytest -m cuda``) and skipped where
``torch.cuda.is_available()`` is False. Test maintenance without a GPU:
``HF_SOFT_DIAMOND_CUDA_TESTS_ON_CPU=1`` runs the bodies with ``DEVICE = cpu`` (compiled
backend skipped); it then compares the CPU with itself and only shows that the tests
run, nothing about a GPU.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from transformers import TrainerCallback

from conftest import TinySeq2SeqData, base_args, stop_at, tiny_marian
from hf_soft_diamond import (
    attach_regularizer,
    available_regularizers,
    build_regularizer,
    get_sas_table,
    sas_log_pdf,
    sas_score,
    select_parameters,
)
from hf_soft_diamond.fused import TensorwiseKernel, compile_available
from hf_soft_diamond.hooks import STATE_KEY
from hf_soft_diamond.optim import RegularizedAdamW
from hf_soft_diamond.regularizers import get_regularizer_class

DRY_RUN_ON_CPU = os.environ.get("HF_SOFT_DIAMOND_CUDA_TESTS_ON_CPU", "0").strip().lower() in {"1", "true", "yes"}
DEVICE = torch.device("cpu") if DRY_RUN_ON_CPU else torch.device("cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() and not DRY_RUN_ON_CPU,
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]

F32_RTOL = 4e-6  # "float32 rounding": 32 ulp
F32_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32, 1.18e-38


def _on_device() -> bool:
    """Whether the test really runs on a GPU (False in the CPU dry run)."""
    return DEVICE.type == "cuda"


def _skip_compile_unless_available(backend: str) -> None:
    if backend != "compile":
        return
    if DRY_RUN_ON_CPU:
        pytest.skip("dry run on the CPU: the compiled backend is only checked on a GPU")
    if not compile_available(DEVICE.type):
        pytest.skip("torch.compile cannot build CUDA kernels here (triton missing or HF_SOFT_DIAMOND_COMPILE=0)")


def _cpu64(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


# =========================================================================== SaS score
SAS_ALPHAS = [0.3, 0.5, 0.9, 1.0, 1.5, 1.9, 2.0]
SAS_GAMMAS = [0.01, 0.5, 3.0]


def _signed_magnitudes() -> Tensor:
    """0, then |w| log-spaced from 1e-45 (float32 subnormals) to 3.4e38 (float32 max), both signs, float32."""
    mags = torch.logspace(-45.0, math.log10(3.4e38), 700, dtype=torch.float64)
    mags = torch.cat([torch.zeros(1, dtype=torch.float64), mags, torch.tensor([3.4e38], dtype=torch.float64)])
    return torch.cat([mags, -mags]).to(torch.float32)


def _assert_float32_rounding(got: Tensor, ref: Tensor, what: str, atol: float = 2 * F32_TINY) -> None:
    torch.testing.assert_close(got.detach().cpu(), ref, rtol=F32_RTOL, atol=atol, equal_nan=False,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("alpha", SAS_ALPHAS)
def test_sas_score_on_the_device_equals_the_cpu_table(alpha):
    """``sas_score`` (exact table read), the fast reader the regularizers use and ``sas_log_pdf``,
    from the same float32 inputs on both devices: equal to float32 rounding everywhere
    (over- and underflow included: both devices see the same float32 limits; the
    log-density to 1e-5 absolute); on inputs where float32 neither over- nor underflows,
    the score is also within 5e-6 of the float64 reference; 0 at w = 0 and exactly odd on
    the device."""
    x_cpu = _signed_magnitudes()
    x_dev = x_cpu.to(DEVICE)
    table = get_sas_table(alpha)
    for gamma in SAS_GAMMAS:
        c = gamma ** (1.0 / alpha)
        got = sas_score(x_dev, alpha, gamma)
        assert got.device.type == DEVICE.type and got.dtype == torch.float32
        _assert_float32_rounding(got, sas_score(x_cpu, alpha, gamma), f"sas_score alpha={alpha} gamma={gamma}")

        # float64 reference where float32 is not the limit: |w|/c and the score in [1e-30, 1e30]
        ref64 = sas_score(x_cpu.double(), alpha, gamma)
        z = x_cpu.double().abs() / c
        safe = (z >= 1e-30) & (z <= 1e30) & (ref64.abs() >= 1e-30) & (ref64.abs() <= 1e30)
        assert safe.sum() > 400
        rel = ((_cpu64(got) - ref64).abs() / ref64.abs())[safe].max().item()
        assert rel < 5e-6, f"alpha={alpha} gamma={gamma}: max relative error vs float64 {rel:.2e}"

        n = len(x_cpu) // 2
        assert got[0].item() == 0.0 and got[n].item() == 0.0  # w = +0 and -0
        assert torch.equal(got[n:], -got[:n])  # odd, exactly

        fast_dev = table.score_signed(x_dev, 1.0 / c, fast=True, out_scale=1.0 / c)
        fast_cpu = table.score_signed(x_cpu, 1.0 / c, fast=True, out_scale=1.0 / c)
        _assert_float32_rounding(fast_dev, fast_cpu, f"fast reader alpha={alpha} gamma={gamma}")

        # the log-density is a sum of O(10) terms and crosses 0: float32 rounding is absolute there
        logf = sas_log_pdf(x_dev, alpha, gamma)
        assert logf.device.type == DEVICE.type
        _assert_float32_rounding(logf, sas_log_pdf(x_cpu, alpha, gamma), f"sas_log_pdf alpha={alpha} gamma={gamma}",
                                 atol=1e-5)

    # half-precision weights are scored in float32 and rounded once: at most one bf16 ulp apart
    x_bf16 = x_cpu[(x_cpu.abs() > 1e-30) & (x_cpu.abs() < 1e30)].to(torch.bfloat16)
    got = sas_score(x_bf16.to(DEVICE), alpha, 0.5)
    assert got.dtype == torch.bfloat16
    ref = sas_score(x_bf16.float(), alpha, 0.5)
    torch.testing.assert_close(got.float().cpu(), ref, rtol=2.0 ** -7, atol=2 * F32_TINY)


# =========================================================================== elementwise regularizers
#: Settings that make each prior's pull visible in a few steps (strength) and exercise its
#: interesting branch (hyperparameters: SaS alpha 0.5 (fast reader with a sqrt), pWD
#: p < 1 with a p schedule, Lp p < 1). A regularizer not listed gets strength 1e-2 and
#: its defaults. The steps must stay contracting (``lr * strength * max|psi'| < 1``), or
#: float rounding is amplified from step to step and no two implementations agree: the
#: SaS slope at 0 is ``kappa / c^2`` (120 / c^2 at alpha 0.5), hence gamma 1 (c = 1), not
#: the 0.1 (c = 0.01, slope 1.2e6) of the README's example.
STRENGTHS: dict[str, float] = {"l2": 0.2, "l1": 0.05, "lp": 0.01, "sas": 0.01, "pwd": 0.5}
SETTINGS: dict[str, dict[str, Any]] = {
    "sas": {"alpha": 0.5, "gamma": 1.0},
    "pwd": {"p": 0.8, "p_schedule_steps": 3},
    "lp": {"p": 0.7, "eps": 1e-2},
}
LRS = [0.05, 0.03, 0.04, 0.01, 0.02]


def _reg_kwargs(name: str, mode: str, backend: str) -> dict[str, Any]:
    return {"strength": STRENGTHS.get(name, 1e-2), "mode": mode, "fused_backend": backend, **SETTINGS.get(name, {})}


def _elementwise_cases() -> list[tuple[str, str]]:
    """``(name, mode)`` of every registered regularizer mode whose ``elementwise_terms`` is not None."""
    cases = []
    for name in available_regularizers():
        for mode in get_regularizer_class(name).modes:
            if build_regularizer(name, **_reg_kwargs(name, mode, "eager")).elementwise_terms(0.1) is not None:
                cases.append((name, mode))
    return cases


ELEMENTWISE = _elementwise_cases()
CASE_IDS = [f"{name}-{mode}" for name, mode in ELEMENTWISE]


def _make_params(device: torch.device | str, dtype: torch.dtype) -> dict[str, nn.Parameter]:
    """Two regularized weights (odd sizes, one 3-D) and an unregularized bias; seed 0, float64 draws."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"w1": (33, 17), "w2": (8, 3, 5), "b": (17,)}
    return {n: nn.Parameter((torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype))
            for n, s in shapes.items()}


def _data_grads(step: int, params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
            for n, p in params.items()}


def _compiled_kernels_failed(*owners: Any) -> list[str]:
    """Names of the :class:`TensorwiseKernel` attributes (of regularizers/optimizers) whose compilation failed."""
    failed = []
    for owner in owners:
        if owner is None:
            continue
        kernels = dict(vars(owner))
        kernels.update({f"_kernels[{i}]": k for i, k in enumerate(getattr(owner, "_kernels", {}).values())})
        failed += [f"{type(owner).__name__}.{n}" for n, k in kernels.items()
                   if isinstance(k, TensorwiseKernel) and k._compile_failed]
    return failed


def _run(device: torch.device | str, dtype: torch.dtype, optimizer: str, reg_spec: tuple[str, str] | None,
         backend: str = "eager") -> tuple[dict[str, Tensor], Any, torch.optim.Optimizer]:
    """Five steps (learning-rate schedule ``LRS``) from :func:`_make_params` with :func:`_data_grads`.

    ``optimizer``: ``"sgd"`` (momentum 0.9) or ``"adamw"`` (torch's) with the regularizer's
    step hooks, or ``"regularized_adamw"`` (the regularizer fused in). The bias group has
    weight decay 0.1 (coupled for SGD, decoupled for AdamW), the weights none.
    Returns the final weights (float64, CPU), the regularizer and the optimizer.
    """
    params = _make_params(device, dtype)
    reg = None if reg_spec is None else build_regularizer(reg_spec[0], **_reg_kwargs(*reg_spec, backend))
    named = [("w1", params["w1"]), ("w2", params["w2"])]
    groups = [{"params": [params["w1"], params["w2"]], "weight_decay": 0.0},
              {"params": [params["b"]], "weight_decay": 0.1}]
    if optimizer == "regularized_adamw":
        opt: torch.optim.Optimizer = RegularizedAdamW(groups, reg, named, lr=LRS[0], fused_backend=backend)
    else:
        if optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=LRS[0])
        if reg is not None:
            attach_regularizer(opt, reg, named)
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        for name, grad in _data_grads(step, params).items():
            params[name].grad = grad
        opt.step()
    assert all(p.device.type == torch.device(device).type for p in params.values())
    return {n: _cpu64(p) for n, p in params.items()}, reg, opt


def _assert_same_weights(got: dict[str, Tensor], ref: dict[str, Tensor], rtol: float, atol: float, what: str) -> None:
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=rtol, atol=atol, msg=lambda m: f"{what}, {name}: {m}")


def _assert_prior_acted(name: str, regularized: dict[str, Tensor], plain: dict[str, Tensor]) -> None:
    """The prior moved the weights well beyond the comparison tolerance (so the test is not vacuous)."""
    moved = max((regularized[n] - plain[n]).abs().max().item() for n in ("w1", "w2"))
    if name == "none":
        assert moved == 0.0
    else:
        assert moved > 1e-3, f"{name}: the prior moved the weights by only {moved:.2e}"


@pytest.mark.parametrize("backend", ["eager", "compile"])
@pytest.mark.parametrize("case", ELEMENTWISE, ids=CASE_IDS)
def test_elementwise_hook_step_on_the_device_equals_the_cpu(case, backend):
    """attach_regularizer around SGD (momentum) and AdamW: five steps on the device (float32,
    eager or compiled kernels) land where the CPU's eager float32 run does (to float32
    rounding) and where the float64 run does (to float32 accuracy)."""
    _skip_compile_unless_available(backend)
    for optimizer in ("sgd", "adamw"):
        got, reg, _ = _run(DEVICE, torch.float32, optimizer, case, backend)
        assert reg.step == len(LRS)
        assert not _compiled_kernels_failed(reg), _compiled_kernels_failed(reg)
        ref32, _, _ = _run("cpu", torch.float32, optimizer, case, "eager")
        ref64, _, _ = _run("cpu", torch.float64, optimizer, case, "eager")
        _assert_same_weights(got, ref32, rtol=1e-5, atol=1e-6, what=f"{optimizer}: device vs CPU float32")
        _assert_same_weights(got, ref64, rtol=1e-5, atol=2e-6, what=f"{optimizer}: device vs CPU float64")
        _assert_prior_acted(case[0], ref64, _run("cpu", torch.float64, optimizer, None)[0])


@pytest.mark.parametrize("backend", ["eager", "compile"])
@pytest.mark.parametrize("case", ELEMENTWISE, ids=CASE_IDS)
def test_regularized_adamw_on_the_device_equals_adamw_with_hooks_on_the_cpu(case, backend):
    """RegularizedAdamW on the device (the prior inside its fused update) against torch's AdamW
    plus the regularizer's hooks on the CPU (float32 and float64): same weights, same
    optimizer state, same regularizer step count."""
    _skip_compile_unless_available(backend)
    got, reg, opt = _run(DEVICE, torch.float32, "regularized_adamw", case, backend)
    assert reg.step == len(LRS)
    assert not _compiled_kernels_failed(reg, opt), _compiled_kernels_failed(reg, opt)
    assert all(s["exp_avg"].device.type == DEVICE.type for s in opt.state.values())
    ref32, _, ref_opt = _run("cpu", torch.float32, "adamw", case, "eager")
    ref64, _, _ = _run("cpu", torch.float64, "adamw", case, "eager")
    _assert_same_weights(got, ref32, rtol=1e-5, atol=1e-6, what="device RegularizedAdamW vs CPU AdamW+hooks float32")
    _assert_same_weights(got, ref64, rtol=1e-5, atol=2e-6, what="device RegularizedAdamW vs CPU AdamW+hooks float64")
    for p, q in zip([p for g in opt.param_groups for p in g["params"]],
                    [q for g in ref_opt.param_groups for q in g["params"]]):
        assert float(opt.state[p]["step"]) == float(ref_opt.state[q]["step"]) == len(LRS)
        torch.testing.assert_close(_cpu64(opt.state[p]["exp_avg_sq"]), _cpu64(ref_opt.state[q]["exp_avg_sq"]),
                                   rtol=1e-5, atol=1e-7)


# =========================================================================== Trainer, mixed precision
def _trainer(output_dir: Path, *, on_device: bool = True, model: nn.Module | None = None,
             callbacks: list[TrainerCallback] | None = None, **overrides: Any):
    from hf_soft_diamond.trainer import SoftDiamondSeq2SeqTrainer
    from hf_soft_diamond.training_args import SoftDiamondSeq2SeqTrainingArguments

    use_cpu = not (on_device and _on_device())
    args = SoftDiamondSeq2SeqTrainingArguments(**base_args(output_dir, use_cpu=use_cpu, **overrides))
    return SoftDiamondSeq2SeqTrainer(model=model if model is not None else tiny_marian(), args=args,
                                     train_dataset=TinySeq2SeqData(), callbacks=callbacks)


class _OptimizerStepRecorder:
    """Global optimizer step hooks bracketing one trainer's optimizer step.

    Global pre-hooks run before an optimizer's own pre-hooks (the regularizer's), global
    post-hooks after its own post-hooks, so each record holds the weights and the data
    gradients exactly as the optimizer step received them, and the weights after the whole
    step, prior included. Steps skipped by the gradient scaler never reach the hooks.
    """

    def __init__(self) -> None:
        self.trainer: Any = None
        self.records: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]

    def _params(self, optimizer: torch.optim.Optimizer) -> list[nn.Parameter] | None:
        handle = getattr(self.trainer, "regularizer_handle", None)
        if handle is None or optimizer is not handle.optimizer:
            return None
        return handle.params

    def _pre(self, optimizer, args, kwargs) -> None:
        params = self._params(optimizer)
        if params is None:
            return
        lrs = {float(g["lr"]) for g in optimizer.param_groups}
        assert len(lrs) == 1
        self._pending = {
            "dtypes": {p.dtype for p in params} | {p.grad.dtype for p in params if p.grad is not None},
            "devices": {p.device.type for p in params},
            "w": [_cpu64(p) for p in params],
            "g": [None if p.grad is None else _cpu64(p.grad) for p in params],
            "lr": lrs.pop(),
        }

    def _post(self, optimizer, args, kwargs) -> None:
        params = self._params(optimizer)
        if params is None or self._pending is None:
            return
        self._pending["w_after"] = [_cpu64(p) for p in params]
        self.records.append(self._pending)
        self._pending = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture
def step_recorder() -> Iterator[_OptimizerStepRecorder]:
    recorder = _OptimizerStepRecorder()
    yield recorder
    recorder.remove()


def _cauchy_score(w: Tensor, gamma: float) -> Tensor:
    """The SaS score at alpha = 1 (Cauchy, scale gamma) in closed form: ``-2w / (gamma^2 + w^2)``."""
    return -2.0 * w / (gamma * gamma + w * w)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_mixed_precision_prior_acts_on_float32_master_weights(tmp_path, step_recorder, precision, mode):
    """SoftDiamondSeq2SeqTrainer on the device with bf16/fp16 autocast, SGD, the SaS prior at
    alpha = 1: every executed optimizer step saw float32 weights and gradients on the device,
    and moved the weights to ``w - lr*g + lr*strength*psi(w)`` computed in float64 from them
    (psi in closed form), i.e. the prior acted in float32 on the unscaled gradients (coupled:
    added to .grad after unscaling; decoupled: on the weights)."""
    if precision == "fp16" and not _on_device():
        pytest.skip("fp16 autocast with a gradient scaler is a GPU setting")
    strength, gamma = 1e-2, 0.1
    trainer = _trainer(tmp_path, max_steps=5, learning_rate=0.1, regularizer="sas", reg_mode=mode,
                       reg_strength=strength, sas_alpha=1.0, sas_gamma=gamma, **{precision: True})
    step_recorder.trainer = trainer
    trainer.train()
    reg = trainer.regularizer_handle.regularizer
    records = step_recorder.records
    assert len(records) == reg.step >= 3  # fp16: the scaler may skip the first step(s); the prior with it
    assert all(p.dtype == torch.float32 for p in trainer.regularizer_handle.params)
    for t, rec in enumerate(records):
        assert rec["dtypes"] == {torch.float32} and rec["devices"] == {DEVICE.type}, (t, rec["dtypes"], rec["devices"])
        prior_moved = 0.0
        for w0, g, w1 in zip(rec["w"], rec["g"], rec["w_after"]):
            g = torch.zeros_like(w0) if g is None else g
            pull = rec["lr"] * strength * _cauchy_score(w0, gamma)
            torch.testing.assert_close(w1, w0 - rec["lr"] * g + pull, rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"{precision} {mode} step {t}: {m}")
            prior_moved = max(prior_moved, pull.abs().max().item())
        assert prior_moved > 1e-3  # the prior's share of the step is far above the tolerance


class _InfGradientAt(TrainerCallback):
    """Put ``inf`` into one gradient element of ``param`` during the backward pass of step ``step``.

    A tensor hook, so the inf is in the *scaled* gradient, where the gradient scaler looks.
    """

    def __init__(self, param: nn.Parameter, step: int) -> None:
        self.param, self.step, self._handle = param, step, None

    @staticmethod
    def _poison(grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad.view(-1)[0] = float("inf")
        return grad

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self._handle = self.param.register_hook(self._poison)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return control


class _StepObserver(TrainerCallback):
    """Per optimizer step: the regularizer's step counter, the regularized weights and the loss
    scale just before and just after ``optimizer.step()``."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.steps: list[dict[str, Any]] = []

    def _snapshot(self) -> dict[str, Any]:
        handle = self.trainer.regularizer_handle
        scaler = self.trainer.accelerator.scaler
        return {"reg_step": handle.regularizer.step, "w": [_cpu64(p) for p in handle.params],
                "scale": None if scaler is None else float(scaler.get_scale())}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append({"global_step": state.global_step, "before": self._snapshot()})
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps[-1]["after"] = self._snapshot()
        return control


@pytest.mark.parametrize("optimizer", ["hooks", "regularized_adamw"])
def test_fp16_steps_skipped_by_the_scaler_are_skipped_by_the_prior(tmp_path, optimizer):
    """fp16 on the device, AdamW with the decoupled SaS prior (hooks, or fused in
    RegularizedAdamW), an inf in one gradient at step 2: on that step the scaler backs off,
    the regularizer's step counter stays and every regularized weight is unchanged, bit for
    bit (a decoupled prior that acted outside the skipped step would move them). On every
    step the counter advances iff the scale did not back off, and at the end it equals the
    optimizer's own count of executed steps."""
    if not _on_device():
        pytest.skip("fp16 autocast with a gradient scaler is a GPU setting")
    observer = _StepObserver()
    model = tiny_marian()
    inject = _InfGradientAt(model.model.encoder.layers[0].fc1.weight, step=2)
    trainer = _trainer(tmp_path, model=model, callbacks=[inject, observer], fp16=True, max_steps=6, optim="adamw_torch",
                       learning_rate=1e-2, regularizer="sas", reg_mode="decoupled", reg_strength=1e-2, sas_alpha=0.5,
                       sas_gamma=0.1, reg_fused_optimizer=optimizer == "regularized_adamw")
    observer.trainer = trainer
    trainer.train()
    assert trainer.accelerator.scaler is not None
    assert any(p is inject.param for p in trainer.regularizer_handle.params)
    executed = 0
    for s in observer.steps:
        before, after = s["before"], s["after"]
        skipped = after["scale"] < before["scale"]
        unchanged = all(torch.equal(a, b) for a, b in zip(before["w"], after["w"]))
        assert after["reg_step"] == before["reg_step"] + (0 if skipped else 1), s["global_step"]
        assert unchanged == skipped, s["global_step"]
        executed += not skipped
    forced = next(s for s in observer.steps if s["global_step"] == 2)
    assert forced["after"]["scale"] < forced["before"]["scale"]
    reg = trainer.regularizer_handle.regularizer
    assert reg.step == executed <= 5
    raw = trainer.regularizer_handle.optimizer
    assert float(raw.state[inject.param]["step"]) == executed


# =========================================================================== spectral
@pytest.mark.parametrize("name", ["weighted_alpha", "stable_rank"])
def test_spectral_regularizer_on_the_device_gives_the_cpu_gradients(name):
    """weighted_alpha / stable_rank on the tiny Marian's weights (batched refreshes of same-shape
    layers, refresh every 2 steps, power-iteration surrogate in between), SGD with the prior
    as the only gradient plus a fixed perturbation per step: the prior's gradient of every
    step on the device equals the CPU's float32 and float64 ones, the spectral state lives
    on the device, and the exact penalty matches float64."""
    runs: dict[str, dict[str, Any]] = {}
    for key, device, dtype in (("device", DEVICE, torch.float32), ("cpu32", "cpu", torch.float32),
                               ("cpu64", "cpu", torch.float64)):
        model = tiny_marian(seed=0).to(device=device, dtype=dtype)
        named = select_parameters(model)
        params = [p for _, p in named]
        reg = build_regularizer(name, strength=1.0, refresh_every=2, fused_backend="eager")  # no CPU compile
        opt = torch.optim.SGD(params, lr=1e-5)  # the prior moves the weights by <~1e-3 per step
        attach_regularizer(opt, reg, named)
        grads = []
        for step in range(5):
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()  # the coupled prior is the whole gradient
            grads.append([_cpu64(p.grad) for p in params])
            gen = torch.Generator().manual_seed(2000 + step)
            with torch.no_grad():  # a fixed "training" move, the same on every device
                for p in params:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * 1e-3)
        runs[key] = {"grads": grads, "reg": reg, "params": params}
    dev, cpu32, cpu64 = runs["device"], runs["cpu32"], runs["cpu64"]
    assert dev["reg"].refresh_count == cpu64["reg"].refresh_count > 0
    assert all(st.u.device.type == DEVICE.type and st.sigma.device.type == DEVICE.type
               for st in dev["reg"]._states.values())
    # CPU float32 vs float64, measured: <= 1.6e-6 (stable_rank), <= 2e-5 (weighted_alpha: the Hill
    # estimate's gradient leans on mid-spectrum eigenvectors) of the largest gradient entry
    tol32 = 1e-4 if name == "stable_rank" else 1e-3
    for step in range(5):
        scale = max(g.abs().max().item() for g in cpu64["grads"][step])
        assert scale > 0
        for i, (g_dev, g32, g64) in enumerate(zip(dev["grads"][step], cpu32["grads"][step], cpu64["grads"][step])):
            err32 = (g_dev - g32).abs().max().item() / scale
            err64 = (g_dev - g64).abs().max().item() / scale
            assert err32 < tol32 and err64 < tol32, f"{name} step {step} tensor {i}: {err32:.2e} / {err64:.2e}"
    pen_dev = float(dev["reg"].penalty_terms(dev["params"], exact=True))
    pen64 = float(cpu64["reg"].penalty_terms(cpu64["params"], exact=True))
    assert pen_dev == pytest.approx(pen64, rel=1e-4)


# =========================================================================== checkpoints across devices
def _mlp(device: torch.device | str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(device=device, dtype=torch.float64)


def _batch(step: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(3000 + step)
    return (torch.randn(16, 6, generator=gen, dtype=torch.float64).to(device),
            torch.randint(0, 3, (16,), generator=gen).to(device))


CHECKPOINT_KINDS = ["hooks", "regularized_adamw", "spectral_sgd"]


def _optimizer(kind: str, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and regularizer of a checkpoint test; the regularizer's state changes the update.

    ``hooks``/``regularized_adamw``: AdamW with pWD whose p schedule runs over 6 steps (its
    step counter), through the hooks or fused in RegularizedAdamW. ``spectral_sgd``: SGD
    (momentum 0.9) with ``weighted_alpha`` refreshed every 4 steps (its per-layer surrogate
    tensors: frozen Hill alpha and gradient, power-iteration vectors).
    """
    named = [("0.weight", model[0].weight), ("2.weight", model[2].weight)]
    if kind == "spectral_sgd":
        reg = build_regularizer("weighted_alpha", strength=1e-2, mode="coupled", refresh_every=4,
                                fused_backend="eager")
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attach_regularizer(opt, reg, named)
        return opt, reg
    reg = build_regularizer("pwd", strength=0.5, p=0.5, p_schedule_steps=6, fused_backend="eager")
    if kind == "regularized_adamw":
        return RegularizedAdamW(model.parameters(), reg, named, lr=0.05, fused_backend="eager"), reg
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    attach_regularizer(opt, reg, named)
    return opt, reg


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    device = next(model.parameters()).device
    for step in steps:
        x, y = _batch(step, device)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _state_devices(opt: torch.optim.Optimizer) -> set[str]:
    """Device types of the optimizer's per-parameter state tensors (``step`` counters aside)."""
    return {v.device.type for st in opt.state.values() for k, v in st.items() if isinstance(v, Tensor) and k != "step"}


def _save(model: nn.Module, opt: torch.optim.Optimizer) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    return buf.getvalue()


def _resume(kind: str, blob: bytes, device: torch.device | str, keep_regularizer_state: bool = True):
    """A fresh model and optimizer on ``device`` loaded from :func:`_save`'s bytes (read onto
    the CPU first, as the Trainer reads its checkpoints); returns model, optimizer, regularizer."""
    saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = _mlp(device)
    model.load_state_dict(saved["model"])
    opt, reg = _optimizer(kind, model)
    state = saved["optimizer"]
    if not keep_regularizer_state:
        state = {k: v for k, v in state.items() if k != STATE_KEY}
    opt.load_state_dict(state)
    return model, opt, reg


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_checkpoint_written_on_the_device_resumes_on_the_cpu_and_back(kind):
    """Steps 0-2 on the device, saved (model + optimizer state dicts, the regularizer's
    ``hf_soft_diamond`` entry included) and resumed on the CPU for steps 3-5, saved again and
    resumed on the device for steps 6-8: the weights of the uninterrupted CPU run (float64,
    so the devices agree to ~1e-12). Control: dropping the regularizer's entry at the first
    resume (the p schedule restarts; the spectral surrogate is rebuilt at step 3 instead of
    continuing the one of step 0) lands elsewhere."""
    whole = _mlp("cpu")
    whole_opt, _ = _optimizer(kind, whole)
    _train_steps(whole, whole_opt, range(9))
    target = torch.cat([_cpu64(p).flatten() for p in whole.parameters()])

    model = _mlp(DEVICE)
    opt, _ = _optimizer(kind, model)
    _train_steps(model, opt, range(3))
    blob = _save(model, opt)
    assert torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["optimizer"][STATE_KEY]["step"] == 3

    model, opt, reg = _resume(kind, blob, "cpu")
    assert reg.step == 3 and _state_devices(opt) == {"cpu"}
    _train_steps(model, opt, range(3, 6))
    blob2 = _save(model, opt)

    model, opt, reg = _resume(kind, blob2, DEVICE)
    assert reg.step == 6 and _state_devices(opt) == {DEVICE.type}
    _train_steps(model, opt, range(6, 9))
    assert reg.step == 9
    assert all(st.u.device.type == DEVICE.type for st in getattr(reg, "_states", {}).values())
    got = torch.cat([_cpu64(p).flatten() for p in model.parameters()])
    torch.testing.assert_close(got, target, rtol=0, atol=1e-10)

    # control: without the regularizer's state the p schedule restarts and the run lands elsewhere
    model, opt, _ = _resume(kind, blob, "cpu", keep_regularizer_state=False)
    _train_steps(model, opt, range(3, 9))
    amnesic = torch.cat([_cpu64(p).flatten() for p in model.parameters()])
    assert (amnesic - target).abs().max().item() > 1e-6


def test_trainer_checkpoint_written_on_the_device_resumes_on_the_cpu_and_back(tmp_path):
    """The Trainer's own checkpoints: steps 1-2 on the device (checkpoint-2), 3-4 resumed on the
    CPU (checkpoint-4), 5-6 resumed on the device, with SGD (momentum 0.9, linear schedule) and
    pWD (p schedule over the 6 steps): the weights of an uninterrupted 6-step CPU run, to
    float32 accuracy; the regularizer's step rides in every checkpoint."""
    from hf_soft_diamond.trainer import SoftDiamondSeq2SeqTrainer  # noqa: F401 - import errors fail here

    run = dict(regularizer="pwd", reg_strength=0.05, lp_p=0.5, pwd_p_start=2.0, pwd_p_schedule_steps=6,
               optim="sgd", optim_args="momentum=0.9", learning_rate=0.05, lr_scheduler_type="linear", max_steps=6,
               save_strategy="steps", save_steps=2)
    full = _trainer(tmp_path / "full", on_device=False, **run)
    full.train()
    target = torch.cat([_cpu64(p).flatten() for p in full.model.parameters()])

    out = tmp_path / "moving"
    first = _trainer(out, on_device=True, callbacks=[stop_at(2)], **run)
    first.train()
    assert first.args.device.type == DEVICE.type
    second = _trainer(out, on_device=False, model=tiny_marian(seed=123), callbacks=[stop_at(4)], **run)
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert second.args.device.type == "cpu" and second.regularizer_handle.regularizer.step == 4
    third = _trainer(out, on_device=True, model=tiny_marian(seed=321), **run)
    third.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert third.regularizer_handle.regularizer.step == 6
    for step in (2, 4):
        saved = torch.load(out / f"checkpoint-{step}" / "optimizer.pt", weights_only=True)
        assert saved[STATE_KEY]["step"] == step and saved[STATE_KEY]["regularizer"] == "pwd"
    got = torch.cat([_cpu64(p).flatten() for p in third.model.parameters()])
    assert (target - torch.cat([_cpu64(p).flatten() for p in tiny_marian().parameters()])).abs().max() > 1e-3
    torch.testing.assert_close(got, target, rtol=0, atol=2e-5)
