"""Train a German-English translation model with a heavy-tailed weight prior.

In the style of transformers' ``examples/pytorch/translation/run_translation.py``:
three argument dataclasses (model, data, ``SoftDiamondSeq2SeqTrainingArguments``)
parsed from flags or one JSON file, a ``SoftDiamondSeq2SeqTrainer``, sacrebleu BLEU
(13a, detokenized) and chrF, ``generated_predictions.txt``, and at the end the
sparsity report, the prune curve, plots, ``all_results.json`` and a model card.

Data, one of:
  * ``--dataset_name ding | libreoffice | ding+libreoffice``: the real offline corpora
    built from Debian packages (``scripts/setup.sh`` installs them);
  * ``--dataset_name iwslt2017 --dataset_config_name iwslt2017-de-en`` (or ``wmt14`` /
    ``wmt16`` with ``de-en``): the Hub, through ``datasets.load_dataset`` (needs internet);
  * ``--train_file/--validation_file/--test_file``: json/jsonl/csv/tsv files.

Model: ``--model_name_or_path`` (a Marian/T5/BART checkpoint, with its tokenizer) or
``--model_size micro|tiny|small|iwslt`` built from a config with a joint BPE tokenizer trained
on the training split (saved with the model).

Runs unchanged under ``accelerate launch`` and ``torchrun``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, set_seed

from ..data.translation import (
    load_hub_translation_dataset,
    load_offline_translation_corpus,
    load_translation_files,
    train_translation_tokenizer,
)
from ..metrics import compute_bleu
from ..models import TRANSLATION_MODEL_SIZES, build_translation_model, load_translation_model
from ..spectrum_monitor import SpectrumCallback
from ..trainer import SoftDiamondSeq2SeqTrainer
from ..training_args import SoftDiamondSeq2SeqTrainingArguments
from .common import (FINAL_SPLITS, PRUNE_FRACTIONS, final_split_and_prefix, finish_run, parse_config,
                     train_and_evaluate, training_summary,
                     write_json)

logger = logging.getLogger(__name__)

OFFLINE_CORPORA = ("ding", "libreoffice", "ding+libreoffice")


@dataclass
class ModelArguments:
    """Which model and tokenizer to train."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Pretrained checkpoint (Hub id such as Helsinki-NLP/opus-mt-de-en, or a local save_pretrained "
                "folder). When unset, a model of --model_size is built from a config."})
    model_size: str = field(default="tiny", metadata={
        "help": f"Named size of the config-built Marian model: {', '.join(TRANSLATION_MODEL_SIZES)} "
                "(iwslt = 6+6 layers, d_model 512, FFN 1024, 4 heads, shared embeddings)."})
    dropout: float | None = field(default=None, metadata={"help": "Override the size's dropout."})
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary of the tokenizer trained on the train split."})
    tokenizer_algorithm: str = field(default="bpe", metadata={"help": "bpe (byte-level, lossless) or unigram."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})

    def __post_init__(self) -> None:
        if self.model_name_or_path is None and self.model_size not in TRANSLATION_MODEL_SIZES:
            raise ValueError(f"`model_size` must be one of {list(TRANSLATION_MODEL_SIZES)}, got {self.model_size!r}.")
        if self.tokenizer_algorithm not in ("bpe", "unigram"):
            raise ValueError(f"`tokenizer_algorithm` must be 'bpe' or 'unigram', got {self.tokenizer_algorithm!r}.")
        if self.vocab_size < 300:
            raise ValueError(f"`vocab_size` must be >= 300 (byte-level BPE needs 256 + specials), got {self.vocab_size}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(default="ding", metadata={
        "help": f"Offline corpus ({', '.join(OFFLINE_CORPORA)}) or a Hub dataset (iwslt2017, wmt14, wmt16)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub config, e.g. iwslt2017-de-en."})
    train_file: str | None = field(default=None, metadata={"help": "json/jsonl/csv/tsv training file."})
    validation_file: str | None = field(default=None, metadata={"help": "json/jsonl/csv/tsv validation file."})
    test_file: str | None = field(default=None, metadata={"help": "json/jsonl/csv/tsv test file."})
    source_lang: str = field(default="de", metadata={"help": "Source language code."})
    target_lang: str = field(default="en", metadata={"help": "Target language code."})
    source_prefix: str = field(default="", metadata={"help": "Prefix for T5-style models, e.g. 'translate German "
                                                             "to English: '."})
    max_source_length: int = field(default=128, metadata={"help": "Source tokens kept (longer are truncated)."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept (longer are truncated)."})
    num_beams: int = field(default=4, metadata={"help": "Beam size for evaluation and prediction."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    prune_fractions: list[float] = field(default_factory=lambda: list(PRUNE_FRACTIONS), metadata={
        "help": "Fractions of the regularized weights pruned by global magnitude for the prune curve (empty: "
                "no curve)."})
    final_split: str = field(default="test", metadata={
        "help": "Split of the final evaluation and the prune curve: 'test' (validation when there is no test split) or "
                "'validation' (hyperparameter tuning: the test split is never read; metrics are eval_*)."})
    prune_eval_samples: int = field(default=200, metadata={
        "help": "Sentences of the final split translated at each prune fraction (each point is one generation "
                "pass)."})
    spectrum_every: int = field(default=0, metadata={
        "help": "Log per-layer spectrum statistics (Hill alpha, weighted alpha, stable rank, lambda_max) every this "
                "many steps with SpectrumCallback, for any regularizer, and plot alpha over training (0: off)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self) -> None:
        if self.final_split not in FINAL_SPLITS:
            raise ValueError(f"`final_split` must be one of {FINAL_SPLITS}, got {self.final_split!r}.")
        if self.spectrum_every < 0:
            raise ValueError(f"`spectrum_every` must be >= 0 (0: off), got {self.spectrum_every}.")
        if not (self.dataset_name or self.train_file):
            raise ValueError("give `dataset_name` (offline corpus or Hub dataset) or `train_file`.")
        if self.num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1, got {self.num_beams}.")
        for name in ("max_source_length", "max_target_length", "prune_eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for f in self.prune_fractions:
            if not 0.0 <= f < 1.0:
                raise ValueError(f"`prune_fractions` must lie in [0, 1), got {f}.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise ValueError(f"`{name}` {path!r} does not exist.")


def load_raw_datasets(data: DataTrainingArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    """The raw ``{"translation": {src, tgt}}`` splits chosen by the data arguments."""
    if data.train_file:
        return load_translation_files(data.train_file, data.validation_file, data.test_file,
                                      source_lang=data.source_lang, target_lang=data.target_lang)
    if data.dataset_name in OFFLINE_CORPORA:
        return load_offline_translation_corpus(data.dataset_name, source_lang=data.source_lang,
                                               target_lang=data.target_lang)
    return load_hub_translation_dataset(data.dataset_name, data.dataset_config_name, cache_dir=model_args.cache_dir)


def _truncate(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None else ds.select(range(min(n, len(ds))))


#: The argument dataclasses of this script, in parsing order.
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, SoftDiamondSeq2SeqTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args = parse_config(ARGUMENT_CLASSES, argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    start = time.perf_counter()

    with training_args.main_process_first(desc="loading data"):
        raw = load_raw_datasets(data_args, model_args)
    if "train" not in raw:
        raise ValueError("the data has no train split")
    src, tgt = data_args.source_lang, data_args.target_lang

    # ------------------------------------------------------------------ model + tokenizer
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
        model = load_translation_model(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    else:
        tok_dir = Path(training_args.output_dir) / "tokenizer"
        with training_args.main_process_first(desc="training the tokenizer"):
            # a resumed run keeps its tokenizer (the checkpoint's ids depend on it); a new run trains its own
            reuse = training_args.resume_from_checkpoint and (tok_dir / "tokenizer.json").exists()
            if training_args.process_index == 0 and not reuse:
                train_translation_tokenizer(raw["train"], vocab_size=model_args.vocab_size,
                                            algorithm=model_args.tokenizer_algorithm, languages=(src, tgt),
                                            output_dir=tok_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        overrides = {} if model_args.dropout is None else {"dropout": model_args.dropout}
        model = build_translation_model(model_args.model_size, tokenizer, seed=training_args.seed,
                                        max_length=data_args.max_target_length, **overrides)
    model.generation_config.num_beams = data_args.num_beams
    model.generation_config.max_length = data_args.max_target_length

    # ------------------------------------------------------------------ tokenization
    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        sources = [data_args.source_prefix + ex[src] for ex in batch["translation"]]
        targets = [ex[tgt] for ex in batch["translation"]]
        enc = tokenizer(sources, text_target=targets, max_length=data_args.max_source_length, truncation=True)
        enc["labels"] = [ids[: data_args.max_target_length] for ids in enc["labels"]]
        return enc

    splits = {"train": _truncate(raw["train"].shuffle(seed=training_args.seed), data_args.max_train_samples)}
    if "validation" in raw:
        splits["validation"] = _truncate(raw["validation"], data_args.max_eval_samples)
    if "test" in raw:
        splits["test"] = _truncate(raw["test"], data_args.max_predict_samples)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {name: ds.map(preprocess, batched=True, remove_columns=ds.column_names,
                                  num_proc=data_args.preprocessing_num_workers, desc=f"tokenizing {name}")
                     for name, ds in splits.items()}

    def compute_metrics(eval_pred) -> dict[str, float]:
        preds, labels = eval_pred
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        hyps = tokenizer.batch_decode(preds, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = compute_bleu(hyps, refs)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    training_args.predict_with_generate = True
    training_args.generation_num_beams = data_args.num_beams
    training_args.generation_max_length = data_args.max_target_length
    trainer = SoftDiamondSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
    )

    if data_args.spectrum_every:
        SpectrumCallback(every=data_args.spectrum_every).install(trainer)

    eval_split, prefix = final_split_and_prefix(data_args.final_split, list(tokenized))
    results: dict[str, Any] = {
        "task": "translation",
        "dataset_name": data_args.dataset_name if not data_args.train_file else Path(data_args.train_file).stem,
        "dataset_config_name": data_args.dataset_config_name,
        "dataset_split": eval_split,
        "language_pair": f"{src}-{tgt}",
        "model": model_args.model_name_or_path or f"marian-{model_args.model_size} (config-built)",
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    # the final evaluation below reads the validation split itself when tuning
    results.update(train_and_evaluate(trainer, training_args,
                                      has_validation="validation" in tokenized and eval_split != "validation"))

    pred = trainer.predict(tokenized[eval_split], metric_key_prefix=prefix)
    results.update(pred.metrics)
    preds = np.where(pred.predictions < 0, tokenizer.pad_token_id, pred.predictions)
    hyps = [h.strip() for h in tokenizer.batch_decode(preds, skip_special_tokens=True)]
    refs = [ex[tgt] for ex in splits[eval_split]["translation"]]
    bleu = compute_bleu(hyps, refs)  # against the raw references, not the tokenized-and-decoded ones
    results.update({f"{prefix}_bleu": bleu["bleu"], f"{prefix}_chrf": bleu["chrf"],
                    f"{prefix}_bleu_signature": bleu["bleu_signature"],
                    f"{prefix}_chrf_signature": bleu["chrf_signature"]})
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "generated_predictions.txt").write_text("\n".join(hyps) + "\n")

    prune_subset = tokenized[eval_split].select(range(min(data_args.prune_eval_samples, len(tokenized[eval_split]))))

    def bleu_of(m: torch.nn.Module) -> float:
        out = trainer.predict(prune_subset, metric_key_prefix="prune")
        return float(out.metrics["prune_bleu"])

    report = trainer.regularizer_report()
    results["training"] = training_summary(trainer, training_args, num_beams=data_args.num_beams)
    results = finish_run(
        model=trainer.model, regularized_names=report["regularized_names"], regularizer_hparams=report["hparams"],
        results=results, output_dir=training_args.output_dir, metric_key=f"{prefix}_bleu", metric_name="BLEU",
        evaluate_fn=bleu_of, prune_fractions=data_args.prune_fractions if data_args.prune_fractions else (),
        thresholds=training_args.sparsity_thresholds, is_main_process=trainer.is_world_process_zero(),
    )
    results["wall_time_s"] = time.perf_counter() - start
    if trainer.is_world_process_zero():
        write_json(Path(training_args.output_dir) / "all_results.json", results)
        logger.info("%s BLEU %.2f (%s); sparsity %s", eval_split, results[f"{prefix}_bleu"],
                    results[f"{prefix}_bleu_signature"],
                    results["sparsity"].get("regularized"))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="hf_soft_diamond run", blocking=True)
    return results


if __name__ == "__main__":
    main()
