"""What the benchmark scripts share: the Marian-like model of issue 2 and a median timer.

Imported as ``from _common import ...``: the scripts run as ``python benchmarks/<name>.py``,
which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers import MarianConfig, MarianMTModel

#: The per-step target's settings (issue 2: the SaS score and pWD against AdamW's decay):
#: ``(label, registry name, mode, hyperparameters)``; each script sets its own strength.
TARGET_PRIORS: list[tuple[str, str, str, dict[str, float]]] = [
    ("sas coupled a=1.5", "sas", "coupled", {"alpha": 1.5, "gamma": 0.5}),
    ("sas decoupled a=0.5", "sas", "decoupled", {"alpha": 0.5, "gamma": 0.5}),
    ("pwd p=0.8", "pwd", "decoupled", {"p": 0.8}),
    ("pwd p=1.0", "pwd", "decoupled", {"p": 1.0}),
]


def marian_like(vocab: int) -> MarianMTModel:
    """The benchmark model: Marian 6+6 layers, d_model 512, FFN 1024, 4 heads, shared embeddings, seed 0."""
    cfg = MarianConfig(
        vocab_size=vocab, d_model=512, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=1024,
        decoder_ffn_dim=1024, encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout=0.0, share_encoder_decoder_embeddings=True,
    )
    torch.manual_seed(0)
    return MarianMTModel(cfg)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds of ``repeats`` calls after ``warmup`` untimed ones (compilation)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
