"""Shared tiny fixtures: a config-built MarianMT model and fixed-length seq2seq data.

Everything is offline and CPU-only. The data have no padding and the same number of
label tokens per example, so the mean loss of a batch of 8 is exactly the mean of the
two batch-of-4 means (gradient-accumulation comparisons are exact up to float rounding).
The builders are plain functions so that ``tests/_ddp_train.py`` (run under torchrun)
uses the very same model and data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

VOCAB = 50
PAD = 49
SRC_LEN = 8
TGT_LEN = 6


def tiny_marian(seed: int = 0):
    """MarianMT, d_model 16, 1 encoder + 1 decoder layer, vocabulary 50, no dropout."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=PAD, eos_token_id=0,
        decoder_start_token_id=PAD, forced_eos_token_id=0, scale_embedding=True,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config.max_length = TGT_LEN + 2
    return model


class TinySeq2SeqData(torch.utils.data.Dataset):
    """``n`` examples of random source (length 8) and target (length 6) ids, no padding."""

    def __init__(self, n: int = 32, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.src = torch.randint(1, VOCAB - 1, (n, SRC_LEN), generator=g)
        self.tgt = torch.randint(1, VOCAB - 1, (n, TGT_LEN), generator=g)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.src[i], "attention_mask": torch.ones(SRC_LEN, dtype=torch.long),
                "labels": self.tgt[i]}


def stop_at(step: int):
    """A Trainer callback that stops training once ``global_step`` reaches ``step`` (a cut run)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_training_stop = True
            return control

    return StopAt()


def base_args(output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a fast, deterministic, quiet CPU run (override any)."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), use_cpu=True, report_to=[], disable_tqdm=True, seed=0,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, gradient_accumulation_steps=1,
        max_steps=3, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, save_strategy="no", logging_steps=1,
        train_sampling_strategy="sequential", dataloader_num_workers=0, reg_fused_backend="eager",
    )
    kwargs.update(overrides)
    return kwargs


def plain_args(output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """:func:`base_args` without the regularizer's fields (for plain ``Seq2SeqTrainingArguments``)."""
    kwargs = base_args(output_dir, **overrides)
    for key in [k for k in kwargs if k.startswith(("reg_", "regularizer", "sas_", "lp_", "pwd_"))]:
        kwargs.pop(key)
    return kwargs


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    """All parameters, concatenated in float64 (tied ones once)."""
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


@pytest.fixture
def tiny_data() -> TinySeq2SeqData:
    return TinySeq2SeqData()
