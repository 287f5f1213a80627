"""The training scripts end to end, on the real offline data, at toy step counts.

Every assertion is against an independent reading of what the script wrote: BLEU is
recomputed by sacrebleu from ``generated_predictions.txt`` and the raw references;
accuracy is checked against chance on held-out images; the model card is parsed back
with ``huggingface_hub.ModelCard.load``; the Hub client is replaced only where the
Trainer calls it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from huggingface_hub import ModelCard

from hf_soft_diamond.tasks.data.images import FASHION_MNIST_DIR
from hf_soft_diamond.tasks.data.translation import DING_PATH

REPO = Path(__file__).resolve().parents[1]
needs_ding = pytest.mark.skipif(not Path(DING_PATH).exists(), reason="needs Debian's trans-de-en (scripts/setup.sh)")
needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="needs Debian's dataset-fashion-mnist (scripts/setup.sh)")
SPECTRAL = ("weighted_alpha", "stable_rank", "powerlaw_prior", "frechet_prior")


def _flags(config: dict) -> list[str]:
    from hf_soft_diamond.tasks.run.common import _dict_to_flags

    return _dict_to_flags(config)


def translation_config(output_dir: Path, **overrides) -> dict:
    config = {
        "dataset_name": "ding", "model_size": "tiny", "vocab_size": 1000, "output_dir": str(output_dir),
        "do_train": True, "do_predict": True, "max_steps": 100, "per_device_train_batch_size": 32,
        "learning_rate": 3e-3,
        "warmup_steps": 10, "logging_steps": 10, "save_strategy": "no", "max_train_samples": 3000,
        "max_eval_samples": 24, "max_predict_samples": 48, "prune_eval_samples": 16, "prune_fractions": [0.0, 0.5],
        "num_beams": 1, "max_source_length": 40, "max_target_length": 40, "report_to": "none", "seed": 7,
        "regularizer": "l1", "reg_strength": 1e-6, "use_cpu": True,
    }
    config.update(overrides)
    return config


def image_config(output_dir: Path, **overrides) -> dict:
    config = {
        "dataset_name": "digits", "model_type": "resnet", "model_size": "tiny", "output_dir": str(output_dir),
        "do_train": True, "max_steps": 30, "per_device_train_batch_size": 32, "learning_rate": 0.05,
        "recipe": "paper", "logging_steps": 5, "save_strategy": "no", "prune_fractions": [0.0, 0.5, 0.9],
        "report_to": "none", "seed": 3, "use_cpu": True, "regularizer": "sas", "reg_strength": 1e-5,
        "sas_alpha": 1.5, "sas_gamma": 0.5,
    }
    config.update(overrides)
    return config


def _log_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


# ----------------------------------------------------------------------------- translation


@needs_ding
@pytest.mark.slow
def test_translation_trains_on_ding_and_reports_sacrebleu(tmp_path):
    from hf_soft_diamond.tasks.data.translation import load_offline_translation_corpus
    from hf_soft_diamond.tasks.run.translation import main

    out = tmp_path / "run"
    config = translation_config(out, save_strategy="steps", save_steps=100)
    results = main(_flags(config))

    # the loss decreased over training (logged every 5 steps)
    losses = [h["loss"] for h in _log_history(out / "checkpoint-100") if "loss" in h]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0
    # BLEU recomputed independently by sacrebleu from what the script wrote
    hyps = (out / "generated_predictions.txt").read_text().splitlines()
    refs = [ex["en"] for ex in load_offline_translation_corpus("ding")["test"]["translation"][:48]]
    assert len(hyps) == len(refs) == 48
    bleu = sacrebleu.BLEU(tokenize="13a")
    expect = bleu.corpus_score(hyps, [refs])
    assert results["test_bleu"] == pytest.approx(expect.score, abs=1e-9) and results["test_bleu"] > 0
    assert results["test_bleu_signature"] == str(bleu.get_signature()) and "tok:13a" in results["test_bleu_signature"]
    written = json.loads((out / "all_results.json").read_text())
    assert written["test_bleu"] == results["test_bleu"]
    assert {p["fraction"] for p in written["prune_curve"]} == {0.0, 0.5}
    assert set(written["sparsity"]["regularized"]) == {"1e-08", "1e-03", "1e-02"}
    # the card carries exactly these numbers and parses back
    card = ModelCard.load(out / "README.md")
    found = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert found["bleu"] == pytest.approx(round(results["test_bleu"], 4))
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= {p.name for p in out.iterdir()}
    for png in ("weight_histogram.png", "prune_curve.png", "layer_sparsity.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_ding
@pytest.mark.slow
def test_translation_script_runs_under_accelerate_launch(tmp_path):
    out = tmp_path / "run"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(translation_config(out, max_steps=6, prune_fractions=[], max_train_samples=400,
                                                         max_predict_samples=8, max_eval_samples=8)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "scripts" / "train_translation.py"),
         str(config_path), "--learning_rate", "3e-3"],  # a flag after the JSON overrides it
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["training"]["learning_rate"] == 3e-3 and results["training"]["max_steps"] == 6
    assert math.isfinite(results["test_bleu"]) and results["regularizer"]["regularizer"] == "l1"


@needs_ding
@pytest.mark.slow
@pytest.mark.parametrize("name", SPECTRAL)
def test_spectral_regularizers_train_a_translation_model(tmp_path, name):
    from hf_soft_diamond.tasks.run.translation import main

    config = translation_config(tmp_path / name, regularizer=name, reg_strength=1e-3, max_steps=6,
                                max_train_samples=300, max_predict_samples=8, max_eval_samples=8, prune_fractions=[],
                                reg_kwargs=json.dumps({"refresh_every": 3}))
    results = main(_flags(config))
    assert results["regularizer"]["regularizer"] == name
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["test_bleu"])


# ----------------------------------------------------------------------------- images


@needs_fmnist
@pytest.mark.slow
def test_image_training_on_fashion_mnist_beats_chance_on_held_out_images(tmp_path):
    from hf_soft_diamond.tasks.run.image import main

    out = tmp_path / "fmnist"
    results = main(_flags(image_config(
        out, dataset_name="fashion_mnist", max_steps=60, per_device_train_batch_size=64, max_train_samples=4000,
        max_eval_samples=500, max_predict_samples=1000, prune_eval_samples=500, hflip=True, crop_padding=2,
        cutout_size=6, regularizer="l1", reg_strength=1e-5, prune_fractions=[0.0, 0.5, 0.99])))
    assert results["image_shape"] == [1, 28, 28] and results["num_classes"] == 10
    assert results["test_accuracy"] > 40.0  # chance: 10 %
    curve = {p["fraction"]: p["metric"] for p in results["prune_curve"]}
    # the unpruned point is the test accuracy on its first 500 images; pruning 99% destroys the model
    assert curve[0.0] > 40.0 and curve[0.99] < curve[0.0] - 15.0
    assert 0.0 <= results["sparsity_at_1pt_loss"] < 0.99
    assert results["train_images_per_second"] > 0


def test_results_keep_every_validation_evaluation_of_the_run(tmp_path):
    """eval_history: each periodic evaluation (step, epoch, loss, accuracy), as the Trainer's own
    checkpointed log has it; the last one is the model the final validation pass measured."""
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.image import main

    out = tmp_path / "tune"
    results = main(_flags(image_config(out, max_steps=8, final_split="validation", eval_strategy="steps",
                                       eval_steps=4, save_strategy="steps", save_steps=8, prune_fractions=[])))
    history = results["eval_history"]
    assert [h["step"] for h in history] == [4, 8]
    logged = [h for h in _log_history(out / "checkpoint-8") if "eval_accuracy" in h]
    for mine, theirs in zip(history, logged, strict=True):
        assert mine["epoch"] == theirs["epoch"] and mine["eval_loss"] == theirs["eval_loss"]
        assert mine["eval_accuracy"] == theirs["eval_accuracy"]
        assert not any(k.endswith("_runtime") for k in mine)
    assert history[-1]["eval_accuracy"] == pytest.approx(results["eval_accuracy"], abs=1e-9)
    assert json.loads((out / "all_results.json").read_text())["eval_history"] == history
    # sparsity also over the weights that are not padding-only (digits: 8x8 images, so some are)
    assert set(results["sparsity"]["live"]) == set(results["sparsity"]["regularized"])
    assert 0 < results["sparsity_numel"]["live"] < results["sparsity_numel"]["regularized"]


def test_image_run_writes_the_prune_curve_of_the_live_weights(tmp_path, capsys):
    """prune_curve_live: the fractions are of the live weights, the padding-only taps zeroed; zeroing
    them alone (fraction 0) changes no prediction, so its accuracy is the unpruned one. The run
    warns before training that most of the tiny ResNet is padding-only at 8x8."""
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.image import main

    with pytest.warns(UserWarning, match="only ever multiply zero padding at input size 8x8"):  # said up front
        results = main(_flags(image_config(tmp_path / "run", max_steps=4, prune_fractions=[0.0, 0.5, 0.9])))
    assert 0 < results["sparsity_numel"]["live"] < results["sparsity_numel"]["regularized"]  # digits: 8x8
    live = {p["fraction"]: p["metric"] for p in results["prune_curve_live"]}
    every = {p["fraction"]: p["metric"] for p in results["prune_curve"]}
    assert list(live) == list(every) == [0.0, 0.5, 0.9]
    assert live[0.0] == every[0.0]
    assert "prune curve (fraction of the live weights pruned" in capsys.readouterr().out


def test_backfill_gives_an_older_record_the_live_figures_a_run_writes(tmp_path, monkeypatch, capsys):
    """scripts/backfill_live_sparsity.py on a run whose results lack sparsity["live"] and
    prune_curve_live (as runs recorded before they had them): from the saved weights, the figures
    the run itself wrote come back; a run whose prune curve cannot be reproduced is left alone."""
    pytest.importorskip("sklearn")
    import importlib.util
    import shutil

    from hf_soft_diamond.tasks.run.image import main

    out = tmp_path / "runs" / "tune" / "arm" / "seed1"
    config = image_config(out, max_steps=4, final_split="validation", prune_fractions=[0.0, 0.5, 0.9])
    main(_flags(config))
    (out / "run_config.json").write_text(json.dumps(config))  # what compare_regularizers writes for a run
    written = json.loads((out / "all_results.json").read_text())
    record = tmp_path / "record" / "tune" / "arm" / "seed1"
    record.mkdir(parents=True)
    for path in (out / "all_results.json", record / "all_results.json"):
        older = json.loads(json.dumps(written))
        del older["sparsity"]["live"], older["sparsity_numel"]["live"], older["prune_curve_live"]
        path.write_text(json.dumps(older))
    shutil.copy(out / "run_config.json", record / "run_config.json")
    spec = importlib.util.spec_from_file_location("backfill", REPO / "scripts" / "backfill_live_sparsity.py")
    backfill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backfill)
    monkeypatch.setattr("sys.argv", ["backfill", str(tmp_path / "runs"), str(tmp_path / "record")])
    backfill.main()  # without --prune_curve: the sparsity only
    assert "prune_curve_live" not in json.loads((out / "all_results.json").read_text())
    tampered = json.loads((out / "all_results.json").read_text())
    tampered["prune_curve"][-1]["metric"] += 5.0  # not what these weights give
    (out / "all_results.json").write_text(json.dumps(tampered))
    monkeypatch.setattr("sys.argv", ["backfill", str(tmp_path / "runs"), str(tmp_path / "record"), "--prune_curve"])
    backfill.main()
    assert "prune_curve_live" not in json.loads((out / "all_results.json").read_text())
    assert "left alone: evaluated again, its prune curve differs" in capsys.readouterr().out
    tampered["prune_curve"][-1]["metric"] -= 5.0
    (out / "all_results.json").write_text(json.dumps(tampered))
    backfill.main()
    for path in (out / "all_results.json", record / "all_results.json"):
        restored = json.loads(path.read_text())
        assert restored["sparsity_numel"]["live"] == written["sparsity_numel"]["live"]
        assert restored["sparsity"]["live"] == pytest.approx(written["sparsity"]["live"], abs=1e-12)
        assert [p["fraction"] for p in restored["prune_curve_live"]] == [0.0, 0.5, 0.9]
        assert [p["metric"] for p in restored["prune_curve_live"]] == pytest.approx(
            [p["metric"] for p in written["prune_curve_live"]], abs=1e-9)
    backfill.main()  # already there: left alone
    assert capsys.readouterr().out.count("prune curve of the live weights") == 1


@pytest.mark.slow
def test_paper_recipe_is_sgd_nesterov_with_a_triangular_schedule(tmp_path):
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.image import main

    out = tmp_path / "digits"
    results = main(_flags(image_config(out, max_steps=40, logging_steps=1, save_strategy="steps", save_steps=40)))
    assert results["training"]["optimizer"].lower().endswith("sgd")
    assert "nesterov=True" in results["training"]["optim_args"]
    lrs = [h["learning_rate"] for h in _log_history(out / "checkpoint-40") if "learning_rate" in h]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.05, rel=0.03) and 6 <= peak <= 9  # peak at 20% of 40 steps
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # linear up ...
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 0.1 * lrs[peak]  # ... linear down
    assert results["test_accuracy"] > 30.0  # 10 digit classes


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECTRAL)
def test_spectral_regularizers_train_an_image_model(tmp_path, name):
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.image import main

    out = tmp_path / name
    results = main(_flags(image_config(out, regularizer=name, reg_strength=1e-3, max_steps=8, prune_fractions=[],
                                       reg_kwargs=json.dumps({"refresh_every": 4}), spectrum_every=4)))
    assert results["regularizer"]["regularizer"] == name
    assert math.isfinite(results["train_loss"]) and results["test_accuracy"] >= 0
    # the spectrum monitor ran at steps 0, 4, 8 and its per-layer alpha was plotted
    history = json.loads((out / "spectrum_history.json").read_text())
    assert [h["step"] for h in history] == [0, 4, 8]
    assert any(k.endswith("/alpha") for k in history[-1])
    assert (out / "plots" / "spectrum_alpha.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_image_script_in_two_processes_writes_one_result(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "ddp"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(image_config(out, max_steps=6, prune_fractions=[0.0, 0.5])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", str(REPO / "scripts" / "train_image.py"), str(config_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["training"]["world_size"] == 2 and len(results["prune_curve"]) == 2


# ----------------------------------------------------------------------------- publishing


class _FakeHub:
    """Stands in for ``huggingface_hub.HfApi`` at the Trainer's call site; records uploads."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        card = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
        self.uploads.append({"repo_id": repo_id, "files": files, "ignore": ignore_patterns, "card": card,
                             "results": json.loads((folder / "all_results.json").read_text())})
        return "https://huggingface.co/" + repo_id


@pytest.mark.slow
def test_push_to_hub_uploads_model_card_and_plots(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    import huggingface_hub
    import transformers.trainer
    from huggingface_hub import constants

    from hf_soft_diamond.tasks.run.image import main

    hub = _FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    # the Hub as seen by the check before the run: on, with a token that it accepts
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None: {"name": "someone"})
    out = tmp_path / "push"
    results = main(_flags(image_config(out, max_steps=5, push_to_hub=True, hub_model_id="someone/digits-sas",
                                       prune_fractions=[0.0, 0.5])))
    assert hub.created == ["someone/digits-sas"] and len(hub.uploads) == 1
    upload = hub.uploads[0]
    assert upload["repo_id"] == "someone/digits-sas"
    assert {"README.md", "model.safetensors", "config.json", "all_results.json", "plots/prune_curve.png",
            "plots/weight_histogram.png", "plots/layer_sparsity.png"} <= set(upload["files"])
    # the uploaded card is ours (not the transformers draft) and carries the run's exact accuracy
    card = ModelCard(upload["card"])
    assert "hf-soft-diamond" in card.data.tags and "sas" in card.data.tags
    accuracy = [r.metric_value for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert accuracy == [pytest.approx(round(results["test_accuracy"], 4))]
    assert upload["results"]["test_accuracy"] == results["test_accuracy"]


# ----------------------------------------------------------------------------- arguments


def test_json_config_with_flag_overrides_and_unknown_keys(tmp_path):
    from hf_soft_diamond.tasks.run.common import parse_config
    from hf_soft_diamond.tasks.run.translation import ARGUMENT_CLASSES

    path = tmp_path / "c.json"
    path.write_text(json.dumps(translation_config(tmp_path / "o", regularizer="sas", sas_alpha=0.5)))
    model_args, data_args, args = parse_config(ARGUMENT_CLASSES, [str(path), "--sas_alpha", "1.5", "--num_beams", "3"])
    assert (args.regularizer, args.sas_alpha, data_args.num_beams, model_args.model_size) == ("sas", 1.5, 3, "tiny")
    assert data_args.prune_fractions == [0.0, 0.5]
    path.write_text(json.dumps({"dataset_name": "ding", "output_dir": "o", "learning_rat": 1e-3}))
    with pytest.raises(ValueError, match="unknown keys.*learning_rat"):
        parse_config(ARGUMENT_CLASSES, [str(path)])


@pytest.mark.parametrize("script, bad, message", [
    ("translation", {"model_size": "huge"}, "`model_size` must be one of"),
    ("translation", {"num_beams": 0}, "`num_beams` must be >= 1"),
    ("translation", {"prune_fractions": [0.5, 1.0]}, r"`prune_fractions` must lie in \[0, 1\)"),
    ("translation", {"tokenizer_algorithm": "wordpiece"}, "`tokenizer_algorithm` must be"),
    ("translation", {"vocab_size": 100}, "`vocab_size` must be >= 300"),
    ("translation", {"train_file": "/nonexistent.jsonl"}, "`train_file`.*does not exist"),
    ("translation", {"sas_alpha": 2.5, "regularizer": "sas"}, r"`sas_alpha` must be .*\(0.0, 2.0\]"),
    ("image", {"model_type": "mlp"}, "`model_type` must be one of"),
    ("image", {"model_type": "vit", "model_size": "resnet18"}, "`model_size` for vit must be one of"),
    ("image", {"model_type": "vit", "model_size": "tiny", "batch_norm": False}, "`batch_norm` False applies"),
    ("image", {"recipe": "fast"}, "`recipe` must be one of"),
    ("image", {"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
    ("image", {"cutout_size": -1}, "`crop_padding` and `cutout_size` must be >= 0"),
    ("image", {"train_dir": "/nonexistent"}, "`train_dir`.*is not a directory"),
    ("image", {"regularizer": "pwd", "lp_p": 3.0}, r"`lp_p` must be .*\(0.0, 2.0\]"),
    ("image", {"final_split": "train"}, r"`final_split` must be one of \('test', 'validation'\)"),
    ("translation", {"final_split": "dev"}, r"`final_split` must be one of \('test', 'validation'\)"),
])
def test_bad_arguments_fail_before_training_with_the_argument_named(tmp_path, script, bad, message):
    import importlib

    module = importlib.import_module(f"hf_soft_diamond.tasks.run.{script}")
    base = (translation_config if script == "translation" else image_config)(tmp_path / "never")
    with pytest.raises(ValueError, match=message):
        module.main(_flags({**base, **bad}))
    assert not (tmp_path / "never").exists()  # nothing half-written


# ----------------------------------------------------------------------------- comparison and CLI


@pytest.mark.slow
def test_compare_runs_arms_and_seeds_and_tabulates_them(tmp_path):
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.compare import main

    base = tmp_path / "base.json"
    base.write_text(json.dumps(image_config(tmp_path / "unused", max_steps=6, prune_fractions=[0.0, 0.5])))
    arms = {"none": {"regularizer": "none"}, "l1": {"regularizer": "l1", "reg_strength": 1e-3}}
    out, record = tmp_path / "cmp", tmp_path / "recorded"
    main(["--task", "image", "--base_config", str(base), "--arms", json.dumps(arms), "--seeds", "1", "2",
          "--output_dir", str(out), "--jobs", "2", "--record_dir", str(record)])
    payload = json.loads((out / "comparison.json").read_text())
    for arm in arms:
        accs = [r["test_accuracy"] for r in payload["runs"][arm]]
        assert len(accs) == 2 and [r["training"]["seed"] for r in payload["runs"][arm]] == [1, 2]
        mean, std = payload["summary"][arm]["metric"]
        assert mean == pytest.approx(sum(accs) / 2) and std == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| arm | runs | accuracy (%)") and len(table) == 4
    assert (out / "prune_curves.png").read_bytes()[:4] == b"\x89PNG"
    # the run's config sits beside the model's config.json (which save_model writes), and re-runs the run alone
    run_config = json.loads((out / "l1" / "seed2" / "run_config.json").read_text())
    assert run_config["seed"] == 2 and run_config["reg_strength"] == 1e-3 and run_config["regularizer"] == "l1"
    assert "model_type" in json.loads((out / "l1" / "seed2" / "config.json").read_text())
    # a finished run is not run again
    mtime = (out / "l1" / "seed1" / "all_results.json").stat().st_mtime
    main(["--task", "image", "--base_config", str(base), "--arms", json.dumps(arms), "--seeds", "1",
          "--output_dir", str(out)])
    assert (out / "l1" / "seed1" / "all_results.json").stat().st_mtime == mtime
    # the recorded small files stand for the runs: with the run folders gone, nothing is trained again
    assert sorted(p.name for p in (record / "l1" / "seed1").iterdir()) == ["all_results.json", "run_config.json"]
    assert json.loads((record / "comparison.json").read_text())["summary"] == payload["summary"]
    shutil.rmtree(out)
    main(["--task", "image", "--base_config", str(base), "--arms", json.dumps(arms), "--seeds", "1", "2",
          "--output_dir", str(out), "--record_dir", str(record)])
    assert not (out / "l1").exists()
    assert json.loads((out / "comparison.json").read_text())["summary"] == payload["summary"]


class _UnreadableImages(torch.utils.data.Dataset):
    """A split whose size is known but whose images must not be read."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        raise AssertionError("the test split was read during a validation-split (tuning) run")

    __getitems__ = __getitem__  # the DataLoader's batched fetch

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def with_transform(self, transform):
        return _UnreadableImages(self.inner.with_transform(transform))

    def subset(self, indices):
        return _UnreadableImages(self.inner.subset(indices))


@pytest.mark.slow
def test_validation_final_split_never_reads_the_test_split(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run import image

    real = image.load_image_splits

    def poisoned(data, model_args):
        splits = real(data, model_args)
        return {**splits, "test": _UnreadableImages(splits["test"])}

    monkeypatch.setattr(image, "load_image_splits", poisoned)
    out = tmp_path / "tune"
    results = image.main(_flags(image_config(out, max_steps=8, final_split="validation")))
    assert results["dataset_split"] == "validation"
    assert not any(k.startswith("test_") for k in results)
    assert 0.0 <= results["eval_accuracy"] <= 100.0 and len(results["prune_curve"]) == 3
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_accuracy"] == results["eval_accuracy"]
    # the default still evaluates on the (readable) test split: the poisoned one fails loudly
    with pytest.raises(AssertionError, match="test split was read"):
        image.main(_flags(image_config(tmp_path / "final", max_steps=2)))


def test_expand_grid_names_every_combination_and_best_of_grid_picks_the_top_mean():
    from hf_soft_diamond.tasks.run.compare import best_of_grid, expand_grid

    arms = {"none": {"regularizer": "none"},
            "sas": {"regularizer": "sas", "sas_alpha": 0.5,
                    "grid": {"sas_gamma": [0.01, 0.1], "reg_strength": [1e-5, 1e-4, 1e-3]}}}
    expanded = expand_grid(arms)
    assert len(expanded) == 1 + 2 * 3 and expanded["none"] == {"regularizer": "none"}
    assert expanded["sas[reg_strength=0.0001,sas_gamma=0.1]"] == {
        "regularizer": "sas", "sas_alpha": 0.5, "sas_gamma": 0.1, "reg_strength": 1e-4}
    # metric means: a NaN (failed runs) never wins; a tie keeps the first grid point
    means = dict(zip(expanded, [50.0, 70.0, float("nan"), 71.0, 71.0, 10.0, 5.0]))
    summary = {name: {"metric": (m, 0.0)} for name, m in means.items()}
    best = best_of_grid(summary, arms)
    first_71 = next(n for n, m in means.items() if m == 71.0)
    assert best == {"none": {"regularizer": "none"}, "sas": expanded[first_71]}
    with pytest.raises(ValueError, match="arm 'bad': `grid` must map each setting to a non-empty list"):
        expand_grid({"bad": {"grid": {"reg_strength": 1e-4}}})


def test_sparsest_within_keeps_the_sparsest_point_no_worse_than_one_point_below_none():
    from hf_soft_diamond.tasks.run.compare import expand_grid, sparsest_within

    arms = {"none": {"regularizer": "none"}, "l1": {"regularizer": "l1", "grid": {"reg_strength": [1, 2, 3, 4]}}}
    names = list(expand_grid(arms))
    # (accuracy, sparsity at 1e-3): none 90; l1 grid: 89.5/0.2, 89.1/0.6, 88.9/0.9 (too lossy), 91/0.1
    rows = [(90.0, 0.0), (89.5, 0.2), (89.1, 0.6), (88.9, 0.9), (91.0, 0.1)]
    summary = {n: {"metric": (m, 0.0), "sparsity": {"1e-03": (sp, 0.0)}} for n, (m, sp) in zip(names, rows)}
    assert sparsest_within(summary, arms)["l1"] == {"regularizer": "l1", "reg_strength": 2}
    assert sparsest_within(summary, arms, max_loss=1.2)["l1"]["reg_strength"] == 3
    # without a 'none' arm the reference is the best grid point (91): only 91 itself is within 1 point
    del summary["none"]
    assert sparsest_within(summary, {"l1": arms["l1"]})["l1"]["reg_strength"] == 4
    assert sparsest_within(summary, {"l1": arms["l1"]}, max_loss=1.6)["l1"]["reg_strength"] == 1


def test_sparsest_within_counts_the_live_weights_when_every_run_records_them():
    """Two L1 points: the stronger zeroes the padding-only taps (more regularized weights small) but
    fewer live ones. Over the live weights the weaker point is the sparser; a summary where one run
    lacks the live figures falls back to all regularized weights."""
    from hf_soft_diamond.tasks.run.compare import aggregate, expand_grid, markdown_table, sparsest_within

    arms = {"none": {"regularizer": "none"}, "l1": {"regularizer": "l1", "grid": {"reg_strength": [1, 2]}}}
    names = list(expand_grid(arms))
    # (accuracy, regularized <= 1e-3, live <= 1e-3), two seeds each
    rows = {names[0]: [(90.0, 0.02, 0.01), (90.2, 0.02, 0.01)], names[1]: [(89.6, 0.50, 0.40), (89.8, 0.52, 0.44)],
            names[2]: [(89.5, 0.70, 0.30), (89.7, 0.72, 0.32)]}
    runs = {name: [{"test_accuracy": acc, "sparsity": {"regularized": {"1e-03": reg}, "live": {"1e-03": live}}}
                   for acc, reg, live in seeds] for name, seeds in rows.items()}
    summary = aggregate(runs, "image")
    assert summary[names[1]]["live_sparsity"]["1e-03"] == pytest.approx((0.42, math.sqrt(0.0008)))
    assert summary[names[2]]["sparsity"]["1e-03"][0] == pytest.approx(0.71)
    assert sparsest_within(summary, arms)["l1"]["reg_strength"] == 1  # live 42% beats 31%
    del runs[names[0]][1]["sparsity"]["live"]
    summary = aggregate(runs, "image")
    assert summary[names[0]]["live_sparsity"] == {}
    assert sparsest_within(summary, arms)["l1"]["reg_strength"] == 2  # regularized 71% beats 51%
    # comparison.md: both columns; an arm without the live figures reads n/a there
    table = markdown_table(summary, "image").splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    live = head.index("live ≤1e-03 (%)")
    assert head[live - 1] == "sparsity ≤1e-03 (%)"
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in table[2:]}
    assert cells[names[1]][live] == "42.00 ± 2.83" and cells[names[1]][live - 1] == "51.00 ± 1.41"
    assert cells[names[0]][live] == "n/a"
    assert "live" not in markdown_table(aggregate({n: [{"test_accuracy": 90.0, "sparsity": {
        "regularized": {"1e-03": 0.1}}}] for n in names}, "image"), "image")


@pytest.mark.slow
def test_compare_tunes_on_validation_and_writes_the_best_arms(tmp_path):
    pytest.importorskip("sklearn")
    from hf_soft_diamond.tasks.run.compare import compare

    base = image_config(tmp_path / "unused", max_steps=6, prune_fractions=[0.0])
    arms = {"l1": {"regularizer": "l1", "grid": {"reg_strength": [1e-5, 0.3]}}}
    payload = compare("image", base, arms, [1], tmp_path / "tune", split="validation")
    runs = payload["runs"]
    assert sorted(runs) == ["l1[reg_strength=0.3]", "l1[reg_strength=1e-05]"]
    for results in runs.values():
        assert results[0]["dataset_split"] == "validation"
        assert not any(k.startswith("test_") for k in results[0])
    accs = {name: r[0]["eval_accuracy"] for name, r in runs.items()}
    winner = max(accs, key=lambda n: (accs[n], n.endswith("1e-05]")))  # ties: the first grid point (1e-05)
    expected = {"regularizer": "l1", "reg_strength": 1e-5 if winner.endswith("1e-05]") else 0.3}
    assert json.loads((tmp_path / "tune" / "best_arms.json").read_text()) == {"l1": expected}
    assert set(json.loads((tmp_path / "tune" / "sparsest_arms.json").read_text())) <= {"l1"}
    assert "accuracy (%) (validation)" in (tmp_path / "tune" / "comparison.md").read_text()
    # ranked by validation loss instead (finished runs are reused): the lowest eval_loss wins
    payload = compare("image", base, arms, [1], tmp_path / "tune", split="validation", metric="loss")
    losses = {name: r[0]["eval_loss"] for name, r in payload["runs"].items()}
    lowest = min(losses, key=lambda n: (losses[n], not n.endswith("1e-05]")))
    assert payload["best_arms"] == {"l1": {"regularizer": "l1", "reg_strength": 1e-5 if lowest.endswith("1e-05]")
                                           else 0.3}}
    assert "| loss (nats) (validation) ▼ | accuracy (%) |" in (tmp_path / "tune" / "comparison.md").read_text()


def test_a_loss_ranks_lower_is_better_and_every_metric_is_tabulated():
    from hf_soft_diamond.tasks.run.compare import aggregate, best_of_grid, markdown_table, sparsest_within

    arms = {"none": {"regularizer": "none"}, "l1": {"regularizer": "l1", "grid": {"reg_strength": [1, 2, 3]}}}
    names = ["none", "l1[reg_strength=1]", "l1[reg_strength=2]", "l1[reg_strength=3]"]
    # (bleu, chrf, loss, sparsity at 1e-3) of two seeds each
    rows = {"none": [(1.0, 10.0, 4.00, 0.0), (0.8, 11.0, 4.02, 0.0)],
            "l1[reg_strength=1]": [(0.9, 12.0, 3.90, 0.1), (1.1, 12.0, 3.92, 0.1)],
            "l1[reg_strength=2]": [(1.5, 9.0, 4.03, 0.5), (1.3, 9.0, 4.05, 0.5)],
            "l1[reg_strength=3]": [(0.1, 3.0, 4.50, 0.9), (0.1, 3.0, 4.52, 0.9)]}
    runs = {n: [{"eval_bleu": b, "eval_chrf": c, "eval_loss": lo, "sparsity": {"regularized": {"1e-03": sp}},
                 "wall_time_s": 1.0} for b, c, lo, sp in rows[n]] for n in names}
    by_loss = aggregate(runs, "translation", "validation", metric="loss")
    assert by_loss["l1[reg_strength=1]"]["metric"][0] == pytest.approx(3.91)
    assert by_loss["none"]["metrics"]["chrf"] == pytest.approx((10.5, math.sqrt(0.5)))
    assert best_of_grid(by_loss, arms, higher_is_better=False)["l1"]["reg_strength"] == 1
    # within 0.05 nats of none's 4.01: strengths 1 (3.91) and 2 (4.04); 2 is the sparser
    assert sparsest_within(by_loss, arms, max_loss=0.05, higher_is_better=False)["l1"]["reg_strength"] == 2
    assert sparsest_within(by_loss, arms, max_loss=0.02, higher_is_better=False)["l1"]["reg_strength"] == 1
    by_bleu = aggregate(runs, "translation", "validation")
    assert best_of_grid(by_bleu, arms)["l1"]["reg_strength"] == 2
    table = markdown_table(by_loss, "translation", "validation", "loss").splitlines()
    head = table[0]
    assert table[3].startswith("| l1[reg_strength=1] | 2 | 3.910 ± 0.014 | 1.00 ± 0.14 | 12.00 ± 0.00 |")
    assert head.startswith("| arm | runs | loss (nats/token) (validation) ▼ | BLEU | chrF | sparsity ≤1e-03 (%)")
    with pytest.raises(ValueError, match="`metric` must be one of .*'accuracy'.* for task 'image', got 'chrf'"):
        aggregate({}, "image", metric="chrf")


def test_compare_rejects_a_bad_arm_before_running_anything(tmp_path):
    from hf_soft_diamond.tasks.run.compare import compare

    arms = {"ok": {"regularizer": "l1"}, "bad": {"regularizer": "sas", "sas_alpha": 0.0}}
    with pytest.raises(ValueError, match=r"arm 'bad' seed 1: .*sas_alpha"):
        compare("image", image_config(tmp_path / "x"), arms, [1], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_cli_help_for_every_subcommand():
    exe = shutil.which("hf-soft-diamond")
    cmd = [exe] if exe else [sys.executable, "-m", "hf_soft_diamond.tasks.cli"]
    top = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0
    for sub in ("train-translation", "train-image", "compare", "card", "table"):
        assert sub in top.stdout
        proc = subprocess.run(cmd + [sub, "--help"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "usage" in proc.stdout.lower()
    bad = subprocess.run(cmd + ["trian"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


def test_cli_table_builds_a_table_that_matches_scipy(tmp_path, monkeypatch):
    from scipy.stats import levy_stable

    from hf_soft_diamond import cli
    from hf_soft_diamond.priors import sas

    monkeypatch.setenv("HF_SOFT_DIAMOND_CACHE", str(tmp_path))
    monkeypatch.setattr(sas.cache, "_MEMORY", {})  # where get_sas_table looks it up
    cli.main(["table", "--alpha", "0.7"])
    files = list(tmp_path.glob("sas_alpha0.7_*.npz"))
    assert len(files) == 1
    x = torch.tensor([0.3, 2.0], dtype=torch.float64)
    scale = 1.0  # gamma = 1 is scipy's scale 1 for the characteristic function exp(-|t|^alpha)
    expect = levy_stable.logpdf(x.numpy(), 0.7, 0.0, scale=scale)
    got = sas.sas_log_pdf(x, 0.7).numpy()
    assert got == pytest.approx(expect, rel=1e-4)


def test_cli_card_rerenders_the_card_from_results(tmp_path):
    from hf_soft_diamond import cli

    run = tmp_path / "run"
    run.mkdir()
    results = {"task": "image-classification", "dataset_name": "fashion_mnist", "test_accuracy": 91.234,
               "sparsity": {"regularized": {"1e-03": 0.25}, "all": {"1e-03": 0.2}},
               "regularizer": {"regularizer": "sas", "sas_alpha": 0.5, "sas_gamma": 0.1}}
    (run / "all_results.json").write_text(json.dumps(results))
    cli.main(["card", str(run), "--model_name", "my-model"])
    card = ModelCard.load(run / "README.md")
    assert card.data.model_name == "my-model"
    values = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert values[("accuracy", "accuracy (%)")] == 91.234
    assert values[("sparsity", "sparsity regularized |w|<=1e-03")] == 0.25


# ----------------------------------------------------------------------------- shipped configs

# claims_*.json are the study report's claims files, checked in tests/test_report.py
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.json") if not p.name.startswith("claims_"))


def _task_of(name: str) -> str:
    return "image" if "image" in name else "translation"


def _is_arms_file(path: Path) -> bool:
    """Arms files map arm names to override dicts; training configs map fields to values."""
    return all(isinstance(v, dict) for v in json.loads(path.read_text()).values())


@pytest.mark.parametrize("path", [p for p in CONFIGS if not _is_arms_file(p)], ids=lambda p: p.name)
def test_every_shipped_training_config_parses(path):
    from hf_soft_diamond.tasks.run.compare import validate_config

    validate_config(_task_of(path.name), json.loads(path.read_text()), path.name)


@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_arms_file(p)], ids=lambda p: p.name)
def test_every_point_of_every_shipped_arms_file_parses(path):
    """Each arm (every grid point) merged into the task's demo config is a valid run."""
    from hf_soft_diamond.tasks.run.compare import expand_grid, validate_config

    task = _task_of(path.name)
    base = json.loads((REPO / "configs" / f"demo_{task}.json").read_text())
    points = expand_grid(json.loads(path.read_text()))
    assert "none" in points
    for name, overrides in points.items():
        validate_config(task, {**base, **overrides}, f"{path.name}: {name}")


def test_compare_reuses_a_run_another_stage_recorded(tmp_path, monkeypatch):
    """An arm whose sparse pick is its best pick is the same run (same config and seed) in both
    stages: the second stage copies the recorded files instead of training again."""
    from hf_soft_diamond.tasks.run import compare as compare_module

    base = image_config(tmp_path / "unused", max_steps=6)
    arm = {"regularizer": "l1", "reg_strength": 1e-3}
    config = {**base, **arm, "seed": 1, "final_split": "test"}
    study = tmp_path / "study"
    done = study / "final" / "l1" / "seed1"
    done.mkdir(parents=True)
    (done / "run_config.json").write_text(json.dumps({**config, "output_dir": "runs/elsewhere/l1/seed1"}))
    results = {"task": "image", "test_accuracy": 81.5, "sparsity": {"regularized": {"1e-03": 0.4}}, "prune_curve": []}
    (done / "all_results.json").write_text(json.dumps(results))

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(compare_module.subprocess, "run", no_training)
    payload = compare_module.compare("image", base, {"l1": arm}, [1], tmp_path / "out", record_dir=study / "sparse")
    assert payload["runs"]["l1"][0]["test_accuracy"] == 81.5
    assert json.loads((study / "sparse" / "l1" / "seed1" / "all_results.json").read_text()) == results
    # a different seed is a different run: it would train
    with pytest.raises(AssertionError, match="trained again"):
        compare_module.compare("image", base, {"l1": arm}, [2], tmp_path / "out", record_dir=study / "sparse")


def test_a_recorded_run_is_copied_even_when_its_weights_could_be_evaluated(tmp_path, monkeypatch):
    """The sparse stage's seeds 2-3 of an arm whose sparse pick is its best: the final stage trained
    and recorded that very run, and its weights are still here. Copying the record is exact and
    free; evaluating the weights again (what the study did before) cost a run each."""
    from hf_soft_diamond.tasks.run import compare as compare_module

    base = image_config(tmp_path / "unused", max_steps=6)
    arm = {"regularizer": "l1", "reg_strength": 1e-3}
    study, weights = tmp_path / "study", tmp_path / "runs" / "final" / "l1" / "seed2"
    results = {"task": "image", "test_accuracy": 81.5, "sparsity": {"regularized": {"1e-03": 0.4}}, "prune_curve": []}
    record = study / "final" / "l1" / "seed2"
    record.mkdir(parents=True)
    (record / "run_config.json").write_text(json.dumps({**base, **arm, "seed": 2, "final_split": "test",
                                                        "output_dir": str(weights)}))
    (record / "all_results.json").write_text(json.dumps(results))
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"weights")
    (weights / "all_results.json").write_text(json.dumps(results))
    assert compare_module.trained_runs(study)  # the weights could be evaluated

    def no_run(*args, **kwargs):
        raise AssertionError("a recorded run was run again")

    monkeypatch.setattr(compare_module.subprocess, "run", no_run)
    payload = compare_module.compare("image", base, {"l1": arm}, [2], tmp_path / "out", record_dir=study / "sparse")
    assert payload["runs"]["l1"][0] == results
    assert json.loads((study / "sparse" / "l1" / "seed2" / "all_results.json").read_text()) == results


def _tuning_record(study: Path, weights: Path, config: dict, results: dict) -> Path:
    """A finished tuning-stage run as a study records it: its record folder, and its run folder
    (``weights``) holding a saved model and the same ``all_results.json``."""
    record = study / "tune" / "l1[reg_strength=0.001]" / "seed1"
    record.mkdir(parents=True)
    (record / "run_config.json").write_text(json.dumps({**config, "output_dir": str(weights)}))
    (record / "all_results.json").write_text(json.dumps(results))
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"weights")
    (weights / "all_results.json").write_text(json.dumps(results))
    return record


def test_compare_evaluates_the_weights_another_stage_trained(tmp_path, monkeypatch):
    """The final stage's seed 1 of the point the tuning stage picked trains the very model the
    tuning stage trained: with those weights still in the tuning run's folder, the final stage
    only evaluates them on its split, and its results keep the tuning run's training figures."""
    from hf_soft_diamond.tasks.run import compare as compare_module

    base = translation_config(tmp_path / "unused", max_steps=6, model_config_overrides={"encoder_layers": 1})
    arm = {"regularizer": "l1", "reg_strength": 1e-3}
    study, weights = tmp_path / "study", tmp_path / "runs" / "tune" / "l1" / "seed1"
    tuned = {"validation_bleu": 30.0, "train_runtime": 321.0, "train_loss": 0.7, "epoch": 2.0,
             "wall_time_s": 400.0, "training": {"max_steps": 6, "optimizer": "adamw_torch"}}
    record = _tuning_record(study, weights, {**base, **arm, "seed": 1, "final_split": "validation"}, tuned)
    launched = []

    def evaluate(cmd, **kwargs):  # the task script, replaced at the process boundary
        config = json.loads(Path(cmd[-1]).read_text())
        launched.append(config)
        evaluated = {"test_bleu": 29.0, "train_runtime": None, "epoch": None, "wall_time_s": 20.0,
                     "training": {"max_steps": 0}, "prune_curve": [], "sparsity": {"regularized": {"1e-03": 0.3}}}
        Path(config["output_dir"], "all_results.json").write_text(json.dumps(evaluated))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(compare_module.subprocess, "run", evaluate)
    payload = compare_module.compare("translation", base, {"l1": arm}, [1], tmp_path / "out",
                                     record_dir=study / "final")
    (config,) = launched
    assert config["do_train"] is False and config["model_name_or_path"] == str(weights)
    assert config["final_split"] == "test" and "model_config_overrides" not in config
    assert config["regularizer"] == "l1" and config["reg_strength"] == 1e-3  # sparsity over the same set
    results = payload["runs"]["l1"][0]
    assert results["test_bleu"] == 29.0
    assert (results["train_runtime"], results["train_loss"], results["epoch"]) == (321.0, 0.7, 2.0)
    assert results["training"] == tuned["training"] and results["trained_in"] == str(record)
    assert results["wall_time_s"] == 420.0  # training (with its validation pass) + this evaluation
    assert json.loads((study / "final" / "l1" / "seed1" / "all_results.json").read_text()) == results

    # weights whose folder was re-run since it was recorded are not the recorded training: train
    (weights / "all_results.json").write_text(json.dumps({**tuned, "validation_bleu": 3.0}))
    launched.clear()
    compare_module.compare("translation", base, {"l1": arm}, [1], tmp_path / "out2", record_dir=study / "final2")
    assert launched[0]["do_train"] is True and "model_name_or_path" not in launched[0]
    # ... nor is a folder without its saved model
    shutil.rmtree(study / "final2")  # (else that training run, now recorded, is the same run)
    (weights / "all_results.json").write_text(json.dumps(tuned))
    (weights / "model.safetensors").unlink()
    launched.clear()
    compare_module.compare("translation", base, {"l1": arm}, [1], tmp_path / "out3", record_dir=study / "final3")
    assert launched[0]["do_train"] is True


def test_an_evaluation_stopped_before_its_training_figures_were_added_gets_them_on_resume(tmp_path, monkeypatch):
    """The study stopped after an evaluation of the tuning stage's weights wrote its results and
    before the training figures were added: on resume the run is not run again, and its results
    (and record) carry the training run's figures, as an uninterrupted run's do."""
    from hf_soft_diamond.tasks.run import compare as compare_module
    from hf_soft_diamond.tasks.run.reuse import TrainedRun, evaluation_config

    base = image_config(tmp_path / "unused", max_steps=6)
    arm = {"regularizer": "l1", "reg_strength": 1e-3}
    study, weights = tmp_path / "study", tmp_path / "runs" / "tune" / "l1" / "seed1"
    tuned = {"eval_accuracy": 80.0, "train_runtime": 321.0, "train_loss": 0.7, "wall_time_s": 400.0,
             "training": {"max_steps": 6}}
    planned = {**base, **arm, "seed": 1, "final_split": "test"}
    record = _tuning_record(study, weights, {**planned, "final_split": "validation"}, tuned)
    run_dir = tmp_path / "out" / "l1" / "seed1"  # the evaluation's folder, as the stopped study left it
    run_dir.mkdir(parents=True)
    (run_dir / "run_config.json").write_text(json.dumps(
        {**evaluation_config(planned, TrainedRun(record, weights)), "output_dir": str(run_dir)}))
    evaluated = {"test_accuracy": 79.0, "train_runtime": None, "wall_time_s": 20.0, "training": {"max_steps": 0},
                 "prune_curve": [], "sparsity": {"regularized": {"1e-03": 0.3}}}
    (run_dir / "all_results.json").write_text(json.dumps(evaluated))

    def no_run(*args, **kwargs):
        raise AssertionError("a finished evaluation was run again")

    monkeypatch.setattr(compare_module.subprocess, "run", no_run)
    results = compare_module.compare("image", base, {"l1": arm}, [1], tmp_path / "out",
                                     record_dir=study / "final")["runs"]["l1"][0]
    assert results["test_accuracy"] == 79.0 and results["trained_in"] == str(record)
    assert (results["train_runtime"], results["training"], results["wall_time_s"]) == (321.0, {"max_steps": 6}, 420.0)
    assert json.loads((study / "final" / "l1" / "seed1" / "all_results.json").read_text()) == results
    assert json.loads((run_dir / "all_results.json").read_text()) == results
    # resuming again changes nothing (the training figures are added once)
    again = compare_module.compare("image", base, {"l1": arm}, [1], tmp_path / "out",
                                   record_dir=study / "final")["runs"]["l1"][0]
    assert again == results


@pytest.mark.slow
def test_reused_training_scores_as_training_again(tmp_path):
    """End to end: a final stage that evaluates the tuning stage's saved weights reports the same
    test figures as the same run trained from scratch (CPU training is deterministic), for a
    1-channel ResNet built without batch norm (the reload keeps both)."""
    from hf_soft_diamond.tasks.run.compare import compare

    base = image_config(tmp_path / "unused", max_steps=8, batch_norm=False, save_strategy="no",
                        prune_fractions=[0.0, 0.5])
    arm = {"regularizer": "l1", "reg_strength": 1e-3}
    study = tmp_path / "study"
    compare("image", base, {"l1": arm}, [1], tmp_path / "out" / "tune", split="validation",
            record_dir=study / "tune")
    reused = compare("image", base, {"l1": arm}, [1], tmp_path / "out" / "final",
                     record_dir=study / "final")["runs"]["l1"][0]
    assert "trained_in" in reused  # evaluated, not trained
    retrained = compare("image", base, {"l1": arm}, [1], tmp_path / "alone" / "final")["runs"]["l1"][0]
    assert "trained_in" not in retrained
    assert reused["test_accuracy"] == pytest.approx(retrained["test_accuracy"], abs=1e-9)
    assert reused["test_loss"] == pytest.approx(retrained["test_loss"], rel=1e-5)
    assert reused["prune_curve"] == pytest.approx(retrained["prune_curve"])
    assert reused["sparsity"] == retrained["sparsity"]
    assert reused["train_loss"] == pytest.approx(retrained["train_loss"], rel=1e-6)


def test_compare_refuses_a_finished_run_of_another_setting_before_running_anything(tmp_path, monkeypatch):
    """When the tuning stage picks another grid point for an arm, the final stage's folders of that
    arm hold runs of the old point: their results must not stand for the new one."""
    from hf_soft_diamond.tasks.run import compare as compare_module

    base = image_config(tmp_path / "unused", max_steps=6)
    old, new = {"regularizer": "l1", "reg_strength": 1e-3}, {"regularizer": "l1", "reg_strength": 1e-2}
    study = tmp_path / "study"
    done = study / "final" / "l1" / "seed1"
    done.mkdir(parents=True)
    (done / "run_config.json").write_text(json.dumps({**base, **old, "seed": 1, "final_split": "test"}))
    (done / "all_results.json").write_text(json.dumps({"test_accuracy": 81.5}))

    def no_training(*args, **kwargs):
        raise AssertionError("something ran")

    monkeypatch.setattr(compare_module.subprocess, "run", no_training)
    with pytest.raises(ValueError, match=r"final/l1/seed1 \(differs in reg_strength\).*--overwrite"):
        compare_module.compare("image", base, {"l1": new, "none": {"regularizer": "none"}}, [1, 2],
                               tmp_path / "out", record_dir=study / "final")
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
    # the run it holds is accepted as itself; an evaluation-only record of the same training too
    assert compare_module.compare("image", base, {"l1": old}, [1], tmp_path / "out",
                                  record_dir=study / "final")["runs"]["l1"][0]["test_accuracy"] == 81.5
    evaluated = {**base, **old, "seed": 1, "final_split": "test", "do_train": False, "model_name_or_path": "w"}
    (done / "run_config.json").write_text(json.dumps(evaluated))
    shutil.rmtree(tmp_path / "out")
    compare_module.compare("image", base, {"l1": old}, [1], tmp_path / "out", record_dir=study / "final")
    # ... but not one that evaluated other weights with other settings
    (done / "run_config.json").write_text(json.dumps({**evaluated, "prune_fractions": [0.0]}))
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(ValueError, match="differs in prune_fractions"):
        compare_module.compare("image", base, {"l1": old}, [1], tmp_path / "out", record_dir=study / "final")


def test_the_image_study_script_takes_another_base_config(tmp_path):
    """BASE, OUT and RECORD move the whole 10-epoch image study (e.g. to a ViT config, a GPU
    job): every stage gets the base config and writes under OUT / RECORD. The Python that
    would run is replaced by `echo` at the process boundary, so the script only prints."""
    env = {**os.environ, "PYTHON": "echo", "BASE": "configs/study_image_vit.json",
           "OUT": str(tmp_path / "out"), "RECORD": str(tmp_path / "record")}
    printed = subprocess.run(["bash", str(REPO / "scripts" / "study_image_converged.sh")], env=env,
                             capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    stages = [line for line in printed if "compare_regularizers.py" in line]
    assert len(stages) == 3
    for line, stage in zip(stages, ("tune", "final", "sparse")):
        assert "--base_config configs/study_image_vit.json" in line
        assert f"--output_dir {tmp_path / 'out' / stage} --record_dir {tmp_path / 'record' / stage}" in line
    assert "study_image_converged.json" not in "\n".join(printed)
