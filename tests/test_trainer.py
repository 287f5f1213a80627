"""SoftDiamond(Seq2Seq)Trainer: GA and multi-process equivalence, resume, eval loss, logs, wiring.

All runs: config-built tiny MarianMT (conftest), CPU, a few steps, fixed-length data
read in order (so batch 4 x GA 2, 2 processes x batch 4 and batch 8 x GA 1 see the same
8 examples at each optimizer step).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from conftest import TinySeq2SeqData, base_args, flat_weights, plain_args, stop_at, tiny_marian
from hf_soft_diamond.hooks import STATE_KEY
from hf_soft_diamond.optim import RegularizedAdamW
from hf_soft_diamond.trainer import SoftDiamondSeq2SeqTrainer, SoftDiamondTrainer, model_consumes_num_items_in_batch
from hf_soft_diamond.training_args import SoftDiamondSeq2SeqTrainingArguments, SoftDiamondTrainingArguments

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

REGULARIZERS = {
    "sas_coupled": {"regularizer": "sas", "reg_strength": 1e-2, "reg_mode": "coupled"},
    "pwd_decoupled": {"regularizer": "pwd", "reg_strength": 1e-2, "reg_mode": "decoupled", "lp_p": 0.7},
}


def soft_trainer(output_dir, data, model=None, cls=SoftDiamondSeq2SeqTrainer, callbacks=None, eval_data=None,
                 **overrides):
    args_cls = SoftDiamondSeq2SeqTrainingArguments if cls is SoftDiamondSeq2SeqTrainer else SoftDiamondTrainingArguments
    args = args_cls(**base_args(output_dir, **overrides))
    return cls(model=model if model is not None else tiny_marian(), args=args, train_dataset=data,
               eval_dataset=eval_data, callbacks=callbacks)


def plain_trainer(output_dir, data, model=None, eval_data=None, **overrides):
    args = Seq2SeqTrainingArguments(**plain_args(output_dir, **overrides))
    return Seq2SeqTrainer(model=model if model is not None else tiny_marian(), args=args, train_dataset=data,
                          eval_dataset=eval_data)


# --------------------------------------------------------------------------- loss kwargs rule
class _UsesItems(nn.Module):
    def forward(self, x, num_items_in_batch=None):
        return x.sum() / num_items_in_batch


class _DeclaresNo(nn.Module):
    accepts_loss_kwargs = False

    def forward(self, x, **kwargs):
        return x.sum() / kwargs["num_items_in_batch"]


def test_which_models_consume_num_items_in_batch():
    assert model_consumes_num_items_in_batch(tiny_marian()) is False  # **kwargs, but CrossEntropyLoss()
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert model_consumes_num_items_in_batch(llama) is True  # self.loss_function = ForCausalLMLoss
    vit = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=32, image_size=8, patch_size=4, num_labels=3))
    assert model_consumes_num_items_in_batch(vit) is False  # loss function swallows it in **kwargs
    assert model_consumes_num_items_in_batch(_UsesItems()) is True
    assert model_consumes_num_items_in_batch(_DeclaresNo()) is False
    assert model_consumes_num_items_in_batch(nn.Linear(2, 2)) is False


def test_trainer_sets_model_accepts_loss_kwargs(tmp_path, tiny_data):
    assert plain_trainer(tmp_path / "p", tiny_data).model_accepts_loss_kwargs is True  # the upstream trap
    assert soft_trainer(tmp_path / "s", tiny_data).model_accepts_loss_kwargs is False
    forced = soft_trainer(tmp_path / "f", tiny_data, model_accepts_loss_kwargs=True)
    assert forced.model_accepts_loss_kwargs is True


# --------------------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("config", list(REGULARIZERS))
def test_grad_accumulation_equivalence(tmp_path, tiny_data, config):
    start = flat_weights(tiny_marian())
    runs = {}
    for batch, accum in ((8, 1), (4, 2)):
        trainer = soft_trainer(tmp_path / f"{batch}x{accum}", tiny_data, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accum, **REGULARIZERS[config])
        trainer.train()
        assert trainer.regularizer_handle.regularizer.step == 3
        runs[accum] = flat_weights(trainer.model)
    moved = (runs[1] - start).abs().max().item()
    assert moved > 1e-3  # the runs did train
    torch.testing.assert_close(runs[2], runs[1], atol=1e-6, rtol=0)


def test_plain_seq2seq_trainer_falls_into_the_trap(tmp_path, tiny_data):
    start = flat_weights(tiny_marian())
    runs = {}
    for batch, accum in ((8, 1), (4, 2)):
        trainer = plain_trainer(tmp_path / f"{batch}x{accum}", tiny_data, per_device_train_batch_size=batch,
                                gradient_accumulation_steps=accum)
        trainer.train()
        runs[accum] = flat_weights(trainer.model)
    # SGD, constant lr: batch 4 x GA 2 moves the weights about twice as far as batch 8 x GA 1
    ratio = ((runs[2] - start).norm() / (runs[1] - start).norm()).item()
    assert 1.8 < ratio < 2.2, ratio
    assert (runs[2] - runs[1]).abs().max().item() > 1e-3
    # with regularizer "none" and no accumulation the soft trainer is the plain trainer, bit for bit
    ours = soft_trainer(tmp_path / "none", tiny_data)
    ours.train()
    torch.testing.assert_close(flat_weights(ours.model), runs[1], atol=0, rtol=0)


# --------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(tmp_path):
    """Every registered regularizer in each of its modes: 2 gloo processes x batch 4 == 1 process x batch 8."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                     os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(TESTS / "_ddp_train.py"),
           "--output_dir", str(out), "--per_device_batch", "4", "--steps", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    import _ddp_train

    for name, reg in _ddp_train.CONFIGS.items():
        infos = [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in (0, 1)]
        assert [i["world_size"] for i in infos] == [2, 2] and [i["rank"] for i in infos] == [0, 1]
        assert all(i["regularizer_steps"] == 3 and i["model_accepts_loss_kwargs"] is False for i in infos)
        ranks = [torch.load(out / f"{name}_rank{r}.pt") for r in (0, 1)]
        single = _ddp_train.train(tmp_path / f"single_{name}", per_device_batch=8, steps=3, **reg).model.state_dict()
        for key, value in single.items():
            torch.testing.assert_close(ranks[0][key], ranks[1][key], atol=0, rtol=0)  # DDP keeps ranks equal
            torch.testing.assert_close(ranks[0][key], value, atol=1e-6, rtol=0)  # = global batch, one process


# --------------------------------------------------------------------------- resume
def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tiny_data):
    # pWD with a p schedule: the regularizer's step counter changes the update, so it must resume too
    run = dict(regularizer="pwd", reg_strength=0.05, lp_p=0.5, pwd_p_start=2.0, pwd_p_schedule_steps=6,
               optim="adamw_torch", learning_rate=1e-2, lr_scheduler_type="linear", max_steps=6,
               train_sampling_strategy="random")
    full = soft_trainer(tmp_path / "full", tiny_data, **run)
    full.train()
    target = flat_weights(full.model)
    assert full.regularizer_handle.regularizer.step == 6

    first = soft_trainer(tmp_path / "cut", tiny_data, callbacks=[stop_at(3)], save_strategy="steps", save_steps=3,
                         **run)
    first.train()
    ckpt = tmp_path / "cut" / "checkpoint-3"
    assert first.state.global_step == 3 and ckpt.is_dir()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert saved[STATE_KEY]["step"] == 3 and saved[STATE_KEY]["regularizer"] == "pwd"

    resumed = soft_trainer(tmp_path / "cut", tiny_data, model=tiny_marian(seed=123), **run)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.regularizer_handle.regularizer.step == 6
    torch.testing.assert_close(flat_weights(resumed.model), target, atol=1e-6, rtol=0)

    # control: the same resume without the regularizer's state (p schedule restarts) lands elsewhere
    lost = tmp_path / "lost" / "checkpoint-3"
    shutil.copytree(ckpt, lost)
    saved.pop(STATE_KEY)
    torch.save(saved, lost / "optimizer.pt")
    amnesic = soft_trainer(tmp_path / "lost", tiny_data, model=tiny_marian(seed=123), **run)
    amnesic.train(resume_from_checkpoint=str(lost))
    assert (flat_weights(amnesic.model) - target).abs().max().item() > 1e-4


# --------------------------------------------------------------------------- fused optimizer
@pytest.mark.parametrize("config", list(REGULARIZERS))
def test_fused_optimizer_trains_like_adamw_with_hooks(tmp_path, tiny_data, config):
    """reg_fused_optimizer swaps in RegularizedAdamW: the same run (AdamW, linear lr schedule,
    weight decay on the unregularized group) lands on the same weights as the hook path."""
    run = dict(optim="adamw_torch", learning_rate=1e-2, lr_scheduler_type="linear", max_steps=4, weight_decay=0.1,
               **REGULARIZERS[config])
    start = flat_weights(tiny_marian())
    hooked = soft_trainer(tmp_path / "hooks", tiny_data, **run)
    hooked.train()
    fused = soft_trainer(tmp_path / "fused", tiny_data, reg_fused_optimizer=True, **run)
    fused.train()
    raw = fused.optimizer.optimizer if hasattr(fused.optimizer, "optimizer") else fused.optimizer
    assert isinstance(raw, RegularizedAdamW) and raw.regularizer is fused.regularizer_handle.regularizer
    assert [g["weight_decay"] for g in raw.param_groups] == [0.1, 0.0]
    assert fused.regularizer_handle.regularizer.step == 4
    assert fused.regularizer_report()["penalty"] > 0
    assert (flat_weights(hooked.model) - start).abs().max().item() > 1e-3
    torch.testing.assert_close(flat_weights(fused.model), flat_weights(hooked.model), atol=2e-6, rtol=0)


def test_fused_optimizer_settings_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="`reg_fused_optimizer=True` replaces AdamW.*'sgd'"):
        SoftDiamondTrainingArguments(**base_args(tmp_path, reg_fused_optimizer=True, regularizer="sas",
                                                 reg_strength=1e-3))
    with pytest.raises(ValueError, match="needs an elementwise regularizer; 'stable_rank'"):
        SoftDiamondTrainingArguments(**base_args(tmp_path, reg_fused_optimizer=True, optim="adamw_torch",
                                                 regularizer="stable_rank", reg_strength=1e-3))


# --------------------------------------------------------------------------- eval loss and logs
def test_eval_loss_is_the_plain_loss_and_logs_carry_penalty_and_sparsity(tmp_path, tiny_data):
    eval_data = TinySeq2SeqData(n=12, seed=7)
    trainer = soft_trainer(tmp_path / "s", tiny_data, eval_data=eval_data, regularizer="sas", reg_strength=1e-2,
                           max_steps=2, eval_strategy="steps", eval_steps=2, logging_steps=1)
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(train_logs) == 2 and len(eval_logs) == 1
    for log in train_logs:
        assert log["reg_penalty"] > 0
        assert {"sparsity/reg/le_1e-08", "sparsity/reg/le_1e-03", "sparsity/reg/le_1e-02",
                "sparsity/all/le_1e-03"} <= set(log)
        assert all(0.0 <= log[k] <= 1.0 for k in log if k.startswith("sparsity/"))
    assert train_logs[-1]["reg_penalty"] == pytest.approx(trainer.regularizer_handle.penalty(), rel=1e-12)
    assert {"eval_sparsity/reg/le_1e-08", "eval_sparsity/reg/le_1e-03",
            "eval_sparsity/reg/le_1e-02"} <= set(eval_logs[0])
    assert not any("penalty" in k for k in eval_logs[0])
    final = [log for log in trainer.state.log_history if "train_loss" in log]
    assert final and "reg_penalty" not in final[0]  # only per-step training logs get it

    metrics = trainer.evaluate()
    assert metrics["eval_sparsity/reg/le_1e-03"] == trainer.sparsity_metrics("x")["x/reg/le_1e-03"]
    plain = plain_trainer(tmp_path / "p", tiny_data, model=trainer.model, eval_data=eval_data).evaluate()
    assert metrics["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-7)
    assert trainer.regularizer_handle.penalty() > 1e-3 * metrics["eval_loss"]  # a penalty there was to leave out


def test_weight_decay_is_replaced_on_regularized_parameters(tmp_path, tiny_data):
    with pytest.warns(UserWarning, match="NOT applied"):
        trainer = soft_trainer(tmp_path / "s", tiny_data, regularizer="sas", reg_strength=1e-3, weight_decay=0.1,
                               optim="adamw_torch")
    optimizer = trainer.create_optimizer()
    regularized = {id(p) for p in trainer.regularizer_handle.params}
    for group in optimizer.param_groups:
        if any(id(p) in regularized for p in group["params"]):
            assert group["weight_decay"] == 0.0
    # no regularizer: the Trainer's own weight decay is untouched
    plain = soft_trainer(tmp_path / "n", tiny_data, weight_decay=0.1, optim="adamw_torch")
    opt = plain.create_optimizer()
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert {id(p) for p in plain.regularizer_handle.params} <= decayed


def test_create_optimizer_attaches_once_and_report(tmp_path, tiny_data):
    trainer = soft_trainer(tmp_path / "s", tiny_data, cls=SoftDiamondTrainer, regularizer="pwd", reg_strength=1e-2,
                           reg_exclude=["embed", "shared"])
    before = trainer.regularizer_report()  # before training: a fresh regularizer, nothing applied yet
    assert before["optimizer_steps"] == 0 and before["penalty"] > 0
    opt = trainer.create_optimizer()
    handle = trainer.regularizer_handle
    assert trainer.create_optimizer() is opt and trainer.regularizer_handle is handle
    trainer.train()
    report = trainer.regularizer_report()
    assert report["optimizer_steps"] == 3 and report["hparams"]["regularizer"] == "pwd"
    assert report["hparams"]["reg_exclude"] == ["embed", "shared"] and report["weight_decay_on_regularized"] == 0.0
    assert report["regularized_names"] == handle.names and not any("embed" in n for n in handle.names)
    assert report["n_regularized_weights"] == sum(p.numel() for p in handle.params)
    assert report["penalty"] == pytest.approx(handle.penalty()) and "sparsity/reg/le_1e-08" in report["sparsity"]


@pytest.mark.parametrize("fused", [False, True], ids=["hooks", "fused"])
def test_a_run_builds_its_regularizer_and_selection_once(tmp_path, tiny_data, monkeypatch, fused):
    """Report before training, train with a log every step, report after: one regularizer object
    (the one reported before training is the one attached) and one parameter selection."""
    import hf_soft_diamond.trainer as trainer_module

    trainer = soft_trainer(tmp_path / "o", tiny_data, cls=SoftDiamondTrainer, regularizer="l1", reg_strength=1e-2,
                           reg_mode="decoupled", optim="adamw_torch", reg_fused_optimizer=fused, logging_steps=1)
    built, selections = [], []
    build = type(trainer.args).build_regularizer
    select = trainer_module.select_parameters
    monkeypatch.setattr(type(trainer.args), "build_regularizer", lambda self: built.append(build(self)) or built[-1])
    monkeypatch.setattr(trainer_module, "select_parameters", lambda *a, **k: selections.append(1) or select(*a, **k))
    trainer.regularizer_report()
    trainer.train()
    report = trainer.regularizer_report()
    assert len(built) == 1 and trainer.regularizer_handle.regularizer is built[0]
    assert len(selections) == 1 and report["optimizer_steps"] == 3


def test_plain_arguments_are_converted(tmp_path, tiny_data):
    args = Seq2SeqTrainingArguments(**plain_args(tmp_path / "p"))
    trainer = SoftDiamondSeq2SeqTrainer(model=tiny_marian(), args=args, train_dataset=tiny_data)
    assert isinstance(trainer.args, SoftDiamondSeq2SeqTrainingArguments)
    assert trainer.args.regularizer == "none" and trainer.args.learning_rate == args.learning_rate


def test_empty_selection_is_an_error(tmp_path, tiny_data):
    trainer = soft_trainer(tmp_path / "s", tiny_data, regularizer="l1", reg_strength=1e-3, reg_include=["^nothing$"])
    with pytest.raises(ValueError, match="no parameter matches"):
        trainer.create_optimizer()


def test_seq2seq_trainer_upgrades_soft_diamond_training_arguments(tmp_path, tiny_data):
    args = SoftDiamondTrainingArguments(**base_args(tmp_path / "a", regularizer="l1", reg_strength=1e-3))
    trainer = SoftDiamondSeq2SeqTrainer(model=tiny_marian(), args=args, train_dataset=tiny_data)
    assert isinstance(trainer.args, SoftDiamondSeq2SeqTrainingArguments)
    assert (trainer.args.regularizer, trainer.args.reg_strength) == ("l1", 1e-3)


def test_epoch_scheduled_regularizers_get_the_trainer_epoch(tmp_path, tiny_data):
    trainer = soft_trainer(tmp_path / "s", tiny_data, regularizer="stable_rank", reg_strength=1e-3,
                           reg_kwargs={"decay": "power", "decay_k": 1.0, "decay_epochs": 1}, max_steps=6)
    trainer.train()
    reg = trainer.regularizer_handle.regularizer
    # 4 optimizer steps per epoch: the 6th step ran during epoch 1.25 (the epoch when it began)
    assert reg.step == 6 and trainer.state.epoch == pytest.approx(1.5) and reg.epoch == pytest.approx(1.25)
