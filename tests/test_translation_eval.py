"""The translation script's evaluation-only mode, its data rules and prediction order.

The model is a config-built Marian saved with ``save_pretrained`` (as a Hub checkpoint such as
``Helsinki-NLP/opus-mt-de-en`` would be); the reference for every prediction is the model's
own ``generate`` called one sentence at a time, outside the Trainer (no sorting, no padding,
no batching), and BLEU is recomputed by sacrebleu from the written predictions.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

REPO = Path(__file__).resolve().parents[1]

PAIRS = [
    ("Das Haus ist klein.", "The house is small."),
    ("Ich trinke gern Kaffee am Morgen.", "I like to drink coffee in the morning."),
    ("Wo ist der Bahnhof?", "Where is the station?"),
    ("Öffnen Sie das Menü Extras und wählen Sie Optionen.", "Open the Tools menu and choose Options."),
    ("Er hat es nicht gewusst.", "He did not know it."),
    ("Die Katze schläft auf dem Sofa neben dem Fenster im Wohnzimmer.",
     "The cat sleeps on the sofa next to the window in the living room."),
    ("Danke!", "Thanks!"),
]


def _write_jsonl(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"translation": {"de": d, "en": e}}) + "\n" for d, e in pairs))
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A small config-built Marian with its tokenizer, saved as a pretrained checkpoint."""
    from hf_soft_diamond.tasks.data.translation import train_translation_tokenizer
    from hf_soft_diamond.tasks.models import build_translation_model

    folder = tmp_path_factory.mktemp("pretrained")
    texts = [t for pair in PAIRS for t in pair] * 20
    tokenizer = train_translation_tokenizer(texts, vocab_size=400, output_dir=folder)
    model = build_translation_model("micro", tokenizer, seed=3, max_length=24, dropout=0.0)
    # a few steps on the pairs, so that each sentence gets its own (order-revealing) translation
    batch = tokenizer([d for d, _ in PAIRS], text_target=[e for _, e in PAIRS], padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    return folder


def _reference_translations(folder: Path, sources: list[str], max_length: int) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    out = []
    for source in sources:
        ids = tokenizer(source, return_tensors="pt", max_length=max_length, truncation=True)
        with torch.no_grad():
            gen = model.generate(**ids, num_beams=1, max_length=max_length)
        out.append(tokenizer.decode(gen[0], skip_special_tokens=True).strip())
    return out


def _eval_flags(folder: Path, out: Path, **extra: str) -> list[str]:
    flags = ["--model_name_or_path", str(folder), "--do_train", "False", "--do_predict", "True",
             "--output_dir", str(out), "--num_beams", "1", "--max_source_length", "24", "--max_target_length", "24",
             "--per_device_eval_batch_size", "3", "--prune_fractions", "--report_to", "none", "--use_cpu", "True"]
    for key, value in extra.items():
        flags += [f"--{key}", value]
    return flags


def test_evaluation_only_on_a_test_file_alone(saved_model, tmp_path):
    from hf_soft_diamond.tasks.run.translation import main

    test_file = _write_jsonl(tmp_path / "my_test.jsonl", PAIRS)
    out = tmp_path / "eval"
    results = main(_eval_flags(saved_model, out, test_file=str(test_file)))

    hyps = (out / "generated_predictions.txt").read_text().splitlines()
    refs = [e for _, e in PAIRS]
    # the same translations, in the file's order, as generate() one sentence at a time
    expected = _reference_translations(saved_model, [d for d, _ in PAIRS], 24)
    assert len(set(expected)) >= 5  # distinct outputs: the order is checked
    assert hyps == expected
    assert results["test_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score, abs=1e-9)
    assert results["dataset_name"] == "my_test" and results["test_samples"] == len(PAIRS)
    assert "prune_curve" not in results  # `--prune_fractions` alone: no curve
    assert "train_loss" not in results and not list(out.glob("checkpoint-*"))


def test_files_never_fall_back_to_a_corpus_and_missing_splits_fail_first(saved_model, tmp_path):
    from hf_soft_diamond.tasks.run.translation import main

    valid = _write_jsonl(tmp_path / "dev.jsonl", PAIRS[:3])
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--do_predict .* needs a test split.*give --test_file"):
        main(_eval_flags(saved_model, out, validation_file=str(valid)))
    assert not out.exists()
    with pytest.raises(ValueError, match="--do_train needs a train split"):
        main(_eval_flags(saved_model, out, validation_file=str(valid), do_train="True", test_file=str(valid)))
    assert not out.exists()


@pytest.mark.parametrize("content, message", [
    ("", "holds no de-en pairs"),
    ('{"translation": {"de": "Hallo"}}\n', "is not a de-en translation file"),
])
def test_bad_test_files_fail_before_any_work(saved_model, tmp_path, content, message):
    from hf_soft_diamond.tasks.run.translation import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(ValueError, match=f"`test_file`.*{message}"):
        main(_eval_flags(saved_model, tmp_path / "never", test_file=str(bad)))
    assert not (tmp_path / "never").exists()


def test_truncation_of_more_than_one_percent_is_logged_with_counts(saved_model, tmp_path, caplog):
    from hf_soft_diamond.tasks.run.translation import main

    test_file = _write_jsonl(tmp_path / "t.jsonl", PAIRS)
    flags = _eval_flags(saved_model, tmp_path / "trunc", test_file=str(test_file))
    flags[flags.index("--max_source_length") + 1] = "6"
    with caplog.at_level(logging.WARNING):
        main(flags)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    longer = sum(len(tokenizer(d)["input_ids"]) > 6 for d, _ in PAIRS)
    assert longer > 0
    assert any(f"{longer} of {len(PAIRS)} sources" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_prediction_in_two_processes_matches_one_process(saved_model, tmp_path):
    """torchrun, 2 gloo processes, 7 sentences in batches of 3 (the split does not divide evenly)."""
    test_file = _write_jsonl(tmp_path / "t.jsonl", PAIRS)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29531", str(REPO / "scripts" / "train_translation.py"),
                           *_eval_flags(saved_model, out, test_file=str(test_file), do_eval="False")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hyps = (out / "generated_predictions.txt").read_text().splitlines()
    assert hyps == _reference_translations(saved_model, [d for d, _ in PAIRS], 24)
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_samples"] == len(PAIRS) and results["training"]["world_size"] == 2
