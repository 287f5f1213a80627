"""The shipped base translator, ``models/marian-de-en-base``: loads, matches its card, translates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

BASE = Path(__file__).resolve().parents[1] / "models" / "marian-de-en-base"


@pytest.fixture(scope="module")
def base():
    from transformers import AutoTokenizer

    from hf_soft_diamond.tasks.models import load_translation_model

    if not (BASE / "model.safetensors").is_file():
        pytest.fail(f"the base translator is missing: {BASE} (python3 scripts/train_base_translator.py)")
    return load_translation_model(BASE).eval(), AutoTokenizer.from_pretrained(BASE)


def test_it_is_small_and_half_precision_on_disk():
    size = sum(p.stat().st_size for p in BASE.iterdir())
    assert size <= 30 * 2**20
    from safetensors import safe_open

    with safe_open(BASE / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    results = json.loads((BASE / "all_results.json").read_text())
    assert dtypes == {"F16" if results["training"]["weights_dtype"] == "float16" else "F32"}


def test_the_card_reports_the_results_file(base):
    from huggingface_hub import ModelCard

    card = ModelCard.load(BASE / "README.md")
    results = json.loads((BASE / "all_results.json").read_text())
    bleu = [r.metric_value for r in card.data.eval_results if r.metric_type == "bleu"]
    assert bleu == [pytest.approx(round(results["test_bleu"], 4))]
    # the per-corpus figures cover the real test split: its Ding and LibreOffice sentences, counted here
    from hf_soft_diamond.tasks.data.translation import load_offline_translation_corpus, read_ding_pairs

    rows = load_offline_translation_corpus("ding+libreoffice")["test"]["translation"]
    ding = {de for de, _ in read_ding_pairs()}
    in_ding = sum(r["de"] in ding for r in rows)
    by_source = results["base_model"]["test_bleu_by_source"]
    assert (by_source["ding"]["sentences"], by_source["libreoffice"]["sentences"]) == (in_ding, len(rows) - in_ding)


def test_it_translates_held_out_sentences(base):
    """Greedy translations of 64 test sentences of each sub-corpus, scored by sacrebleu: far
    above what an untrained or broken model gets (< 1 BLEU)."""
    from hf_soft_diamond.tasks.data.translation import load_offline_translation_corpus, read_ding_pairs
    from hf_soft_diamond.tasks.metrics import compute_bleu

    model, tokenizer = base
    rows = load_offline_translation_corpus("ding+libreoffice")["test"]["translation"]
    ding = {de for de, _ in read_ding_pairs()}
    for in_ding, floor in ((True, 4.0), (False, 25.0)):
        chosen = [r for r in rows if (r["de"] in ding) == in_ding][:64]
        batch = tokenizer([r["de"] for r in chosen], return_tensors="pt", padding=True, truncation=True,
                          max_length=128)
        with torch.no_grad():
            out = model.generate(**batch, num_beams=1)
        hypotheses = tokenizer.batch_decode(out, skip_special_tokens=True)
        assert compute_bleu(hypotheses, [r["en"] for r in chosen])["bleu"] > floor


def test_the_demo_config_fine_tunes_the_base_decoupled(tmp_path, capsys):
    """The README's main command, cut to 3 steps on 48 test sentences: it loads the shipped base,
    translates before and after, runs the prior decoupled on the non-embedding matrices, and
    ends with the summary a person reads."""
    from hf_soft_diamond.regularizers.selection import select_parameters
    from hf_soft_diamond.tasks.models import load_translation_model
    from hf_soft_diamond.tasks.run.translation import main

    config = Path(__file__).resolve().parents[1] / "configs" / "demo_translation.json"
    results = main([str(config), "--output_dir", str(tmp_path / "demo"), "--max_steps", "3", "--logging_steps", "1",
                    "--max_predict_samples", "48", "--prune_eval_samples", "8", "--prune_fractions", "0.0", "0.9"])
    assert results["regularizer"]["regularizer"] == "sas" and results["regularizer"]["reg_mode"] == "decoupled"
    expected = sum(p.numel() for _, p in select_parameters(load_translation_model(BASE), include_embeddings=False))
    assert results["sparsity_numel"]["regularized"] == expected
    # 48 Ding sentences: the base translates some of them (> 1 BLEU) and 3 small steps keep it so
    assert results["before_bleu"] > 1 and results["test_bleu"] > 1
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "->" in printed and "prune curve" in printed and printed.count("  DE  ") == 3
    assert (tmp_path / "demo" / "README.md").is_file() and (tmp_path / "demo" / "model.safetensors").is_file()
