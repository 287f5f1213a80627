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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from ...trainer import SoftDiamondSeq2SeqTrainer
from ...training_args import SoftDiamondSeq2SeqTrainingArguments
from ..data.translation import (
    OFFLINE_CORPORA,
    iter_translation_rows,
    load_hub_translation_dataset,
    load_offline_translation_corpus,
    load_translation_files,
    train_translation_tokenizer,
)
from ..metrics import compute_bleu
from ..models import TRANSLATION_MODEL_SIZES, build_translation_model, load_translation_model
from . import common

logger = logging.getLogger(__name__)



MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


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
    model_config_overrides: dict | str | None = field(default=None, metadata={
        "help": "MarianConfig fields that replace the size's values, as JSON, e.g. "
                "'{\"encoder_layers\": 3, \"encoder_ffn_dim\": 1024}' (config-built models only)."})
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary of the tokenizer trained on the train split."})
    tokenizer_algorithm: str = field(default="bpe", metadata={"help": "bpe (byte-level, lossless) or unigram."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    model_dtype: str = field(default="float32", metadata={
        "help": "dtype a pretrained checkpoint is loaded in: float32 (default: training keeps float32 weights even "
                "from an fp16 checkpoint), bfloat16, float16 or auto (the checkpoint's own)."})

    def __post_init__(self) -> None:
        if self.model_name_or_path is None and self.model_size not in TRANSLATION_MODEL_SIZES:
            raise ValueError(f"`model_size` must be one of {list(TRANSLATION_MODEL_SIZES)}, got {self.model_size!r}.")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"`model_dtype` must be one of {MODEL_DTYPES}, got {self.model_dtype!r}.")
        if self.tokenizer_algorithm not in ("bpe", "unigram"):
            raise ValueError(f"`tokenizer_algorithm` must be 'bpe' or 'unigram', got {self.tokenizer_algorithm!r}.")
        if self.vocab_size < 300:
            raise ValueError(f"`vocab_size` must be >= 300 (byte-level BPE needs 256 + specials), "
                             f"got {self.vocab_size}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}.")
        if isinstance(self.model_config_overrides, str):
            try:
                self.model_config_overrides = json.loads(self.model_config_overrides)
            except json.JSONDecodeError as err:
                raise ValueError(f"`model_config_overrides` must be a JSON object, got "
                                 f"{self.model_config_overrides!r}: {err}") from None
        if self.model_config_overrides is not None:
            if not isinstance(self.model_config_overrides, dict):
                raise ValueError(f"`model_config_overrides` must be a JSON object, "
                                 f"got {self.model_config_overrides!r}.")
            if self.model_name_or_path is not None:
                raise ValueError("`model_config_overrides` applies to config-built models only; it cannot change "
                                 f"the pretrained `model_name_or_path` {self.model_name_or_path!r}.")


@dataclass
class DataTrainingArguments(common.RunDataArguments):
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={
        "help": f"Offline corpus ({', '.join(OFFLINE_CORPORA)}) or a Hub dataset (iwslt2017, wmt14, wmt16). "
                "Default: 'ding' when no --train_file/--validation_file/--test_file is given."})
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
    prune_eval_samples: int = field(default=200, metadata={
        "help": "Sentences of the final split translated at each prune fraction, evenly spread over the split "
                "(each point is one generation pass)."})
    evaluate_before_training: bool = field(default=False, metadata={
        "help": "With --do_train and --do_predict: also translate the final split with the starting model, so "
                "the run reports starting -> trained BLEU (e.g. a pretrained translator before fine-tuning)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1, got {self.num_beams}.")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.uses_files:
            for name in ("train_file", "validation_file", "test_file"):
                path = getattr(self, name)
                if path is not None:
                    check_translation_file(name, path, self.source_lang, self.target_lang)
            if self.dataset_name is not None:
                raise ValueError(f"give either data files (--train_file/--validation_file/--test_file) or "
                                 f"`dataset_name` ({self.dataset_name!r}), not both.")
        elif self.dataset_name is None:
            self.dataset_name = "ding"

    @property
    def uses_files(self) -> bool:
        """Whether the data come from --train_file/--validation_file/--test_file (never a corpus)."""
        return any(getattr(self, n) is not None for n in ("train_file", "validation_file", "test_file"))

    @property
    def dataset_label(self) -> str:
        """How results and cards name the data: the corpus/Hub name, or the files' common stem."""
        if not self.uses_files:
            return str(self.dataset_name)
        files = [Path(f) for f in (self.train_file, self.validation_file, self.test_file) if f]
        return files[0].parent.name if len({f.parent for f in files}) == 1 and len(files) > 1 else files[0].stem


def check_translation_file(name: str, path: str, source_lang: str, target_lang: str) -> None:
    """Fail now, naming the argument, when a data file is missing, empty or lacks the language fields."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"`{name}` {path!r} does not exist.")
    try:
        first = next(iter_translation_rows(file, source_lang, target_lang), None)
    except (ValueError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"`{name}` {path!r} is not a {source_lang}-{target_lang} translation file: {err}") from None
    if first is None:
        raise ValueError(f"`{name}` {path!r} holds no {source_lang}-{target_lang} pairs (empty file).")


def load_raw_datasets(data: DataTrainingArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    """The raw ``{"translation": {src, tgt}}`` splits chosen by the data arguments.

    Files, when any is given (only the given files become splits; never a fallback to a
    corpus); otherwise an offline corpus or a Hub dataset by ``dataset_name``.
    """
    if data.uses_files:
        return load_translation_files(data.train_file, data.validation_file, data.test_file,
                                      source_lang=data.source_lang, target_lang=data.target_lang)
    if data.dataset_name in OFFLINE_CORPORA:
        return load_offline_translation_corpus(data.dataset_name, source_lang=data.source_lang,
                                               target_lang=data.target_lang)
    return load_hub_translation_dataset(data.dataset_name, data.dataset_config_name, cache_dir=model_args.cache_dir)


def required_splits(data: DataTrainingArguments, training_args: Any) -> dict[str, str]:
    """The splits this run reads, each with the flag that needs it."""
    needed: dict[str, str] = {}
    if training_args.do_train:
        needed["train"] = "--do_train"
    if training_args.do_eval:
        needed["validation"] = "--do_eval (or an eval_strategy)"
    if training_args.do_predict:
        needed["validation" if data.final_split == "validation" else "test"] = (
            f"--do_predict with --final_split {data.final_split}")
    return needed


def check_splits(raw: datasets.DatasetDict, data: DataTrainingArguments, training_args: Any) -> None:
    """A clear error when a split the run needs is missing or empty."""
    source = ("the given files" if data.uses_files else f"dataset {data.dataset_name!r}")
    for split, why in required_splits(data, training_args).items():
        if split not in raw:
            hint = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}[split]
            raise ValueError(f"{why} needs a {split} split, which {source} does not have (give {hint}).")
        if len(raw[split]) == 0:
            raise ValueError(f"the {split} split of {source} is empty, but {why} needs it.")
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("nothing to do: give --do_train, --do_eval and/or --do_predict.")


def _truncate(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None else ds.select(range(min(n, len(ds))))


def _warn_truncation(split: str, n_rows: int, cut_sources: int, cut_targets: int, data: DataTrainingArguments) -> None:
    for side, cut, limit in (("sources", cut_sources, data.max_source_length),
                             ("targets", cut_targets, data.max_target_length)):
        if n_rows and cut / n_rows > 0.01:
            logger.warning("%s: %d of %d %s (%.1f%%) are longer than %d tokens and were truncated; raise "
                           "--max_%s_length if that matters.", split, cut, n_rows, side, 100 * cut / n_rows, limit,
                           "source" if side == "sources" else "target")


def length_sorted(ds: datasets.Dataset) -> tuple[datasets.Dataset, np.ndarray]:
    """``ds`` sorted by source length (longest first: padding and batch shapes shrink as
    generation goes) and the order, so that ``out[order[i]] = sorted_out[i]`` restores it."""
    order = np.argsort([-len(ids) for ids in ds["input_ids"]], kind="stable")
    return ds.select(order), order


def predict_in_order(trainer: Any, ds: datasets.Dataset, metric_key_prefix: str) -> tuple[Any, np.ndarray]:
    """``trainer.predict`` on ``ds`` sorted by length; the output and the predictions in ``ds``'s order.

    Several processes pad the last batches (accelerate repeats examples so every process gets
    a full batch); the gathered predictions are cut back to ``len(ds)`` before unsorting.
    """
    sorted_ds, order = length_sorted(ds)
    out = trainer.predict(sorted_ds, metric_key_prefix=metric_key_prefix)
    preds = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    preds = np.asarray(preds)[: len(ds)]
    restored = np.empty_like(preds)
    restored[order] = preds
    return out, restored


#: The argument dataclasses of this script, in parsing order.
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, SoftDiamondSeq2SeqTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args, start = common.start_run(ARGUMENT_CLASSES, argv)

    with training_args.main_process_first(desc="loading data"):
        raw = load_raw_datasets(data_args, model_args)
    check_splits(raw, data_args, training_args)

    with common.run_output_dir(training_args):
        return _run(model_args, data_args, training_args, raw, start)


def _run(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: Any,
         raw: datasets.DatasetDict, start: float) -> dict[str, Any]:
    src, tgt = data_args.source_lang, data_args.target_lang
    # ------------------------------------------------------------------ model + tokenizer
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
        dtype = model_args.model_dtype if model_args.model_dtype == "auto" else getattr(torch, model_args.model_dtype)
        model = load_translation_model(model_args.model_name_or_path, cache_dir=model_args.cache_dir, dtype=dtype)
    else:
        if "train" not in raw:
            raise ValueError("a config-built model (no --model_name_or_path) needs a train split for its tokenizer.")
        tok_dir = Path(training_args.output_dir) / "tokenizer"
        with training_args.main_process_first(desc="training the tokenizer"):
            # a resumed run keeps its tokenizer (the checkpoint's ids depend on it); a new run trains its own
            reuse = training_args.resume_from_checkpoint and (tok_dir / "tokenizer.json").exists()
            if training_args.process_index == 0 and not reuse:
                train_translation_tokenizer(raw["train"], vocab_size=model_args.vocab_size,
                                            algorithm=model_args.tokenizer_algorithm, languages=(src, tgt),
                                            output_dir=tok_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        overrides = dict(model_args.model_config_overrides or {})
        if model_args.dropout is not None:
            overrides["dropout"] = model_args.dropout
        model = build_translation_model(model_args.model_size, tokenizer, seed=training_args.seed,
                                        max_length=data_args.max_target_length, **overrides)
    model.generation_config.num_beams = data_args.num_beams
    model.generation_config.max_length = data_args.max_target_length

    # ------------------------------------------------------------------ tokenization
    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        sources = [data_args.source_prefix + ex[src] for ex in batch["translation"]]
        targets = [ex[tgt] for ex in batch["translation"]]
        enc = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        enc["labels"] = tokenizer(text_target=targets, max_length=data_args.max_target_length,
                                  truncation=True)["input_ids"]
        full_src = tokenizer(sources)["input_ids"]
        full_tgt = tokenizer(text_target=targets)["input_ids"]
        enc["source_cut"] = [len(ids) > data_args.max_source_length for ids in full_src]
        enc["target_cut"] = [len(ids) > data_args.max_target_length for ids in full_tgt]
        return enc

    splits: dict[str, datasets.Dataset] = {}
    if "train" in raw and training_args.do_train:
        splits["train"] = _truncate(raw["train"].shuffle(seed=training_args.seed), data_args.max_train_samples)
    if "validation" in raw:
        splits["validation"] = _truncate(raw["validation"], data_args.max_eval_samples)
    if "test" in raw and data_args.final_split == "test":
        splits["test"] = _truncate(raw["test"], data_args.max_predict_samples)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {}
        for name, ds in splits.items():
            enc = ds.map(preprocess, batched=True, remove_columns=ds.column_names,
                         num_proc=data_args.preprocessing_num_workers, desc=f"tokenizing {name}")
            _warn_truncation(name, len(enc), sum(enc["source_cut"]), sum(enc["target_cut"]), data_args)
            tokenized[name] = enc.remove_columns(["source_cut", "target_cut"])

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
    validation = tokenized.get("validation")
    trainer = SoftDiamondSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        # generation during training evaluates length-sorted batches (the metric does not depend on order)
        eval_dataset=length_sorted(validation)[0] if validation is not None else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
    )

    eval_split, prefix, results = common.begin_results(
        trainer, data_args, list(tokenized), task="translation", dataset_name=data_args.dataset_label,
        model_label=model_args.model_name_or_path or f"marian-{model_args.model_size} (config-built)",
        language_pair=f"{src}-{tgt}")
    predict = training_args.do_predict
    refs = [ex[tgt] for ex in splits[eval_split]["translation"]] if predict else []
    if predict:
        results[f"{prefix}_samples"] = len(refs)

    def translate(metric_key_prefix: str) -> tuple[dict[str, Any], list[str]]:
        out, preds = predict_in_order(trainer, tokenized[eval_split], metric_key_prefix)
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        hyps = [h.strip() for h in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        scores = compute_bleu(hyps, refs)  # against the raw references, not the tokenized-and-decoded ones
        metrics = {k: v for k, v in out.metrics.items() if not k.endswith(("_bleu", "_chrf"))}
        metrics.update({f"{metric_key_prefix}_bleu": scores["bleu"], f"{metric_key_prefix}_chrf": scores["chrf"],
                        f"{metric_key_prefix}_bleu_signature": scores["bleu_signature"],
                        f"{metric_key_prefix}_chrf_signature": scores["chrf_signature"]})
        return metrics, hyps

    if predict and training_args.do_train and data_args.evaluate_before_training:
        before, _ = translate("before")
        results.update({k: v for k, v in before.items() if k.startswith("before_")})

    # the final evaluation below reads the validation split itself when tuning
    results.update(common.train_and_evaluate(trainer, training_args,
                                             has_validation=(training_args.do_eval and "validation" in tokenized
                                                             and not (predict and eval_split == "validation"))))
    hyps: list[str] = []
    if predict:
        metrics, hyps = translate(prefix)
        results.update(metrics)
        if trainer.is_world_process_zero():
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / "generated_predictions.txt").write_text("\n".join(hyps) + "\n")

    # spread over the split: a corpus stored in blocks (ding+libreoffice) is sampled from every block
    prune_rows = spread_indices(len(tokenized[eval_split]), data_args.prune_eval_samples)
    prune_subset = tokenized[eval_split].select(prune_rows) if predict else None
    results["prune_eval_samples"] = len(prune_rows)

    def bleu_of(m: torch.nn.Module) -> float:
        out, preds = predict_in_order(trainer, prune_subset, "prune")
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        sub_refs = [refs[i] for i in prune_rows]
        return compute_bleu(tokenizer.batch_decode(preds, skip_special_tokens=True), sub_refs)["bleu"]

    def summary(final: dict[str, Any]) -> str:
        examples = [(splits[eval_split][i]["translation"][src], hyps[i], refs[i]) for i in example_indices(refs, 3)]
        return translation_summary(final, prefix, examples, training_args.output_dir)

    return common.finish_run(
        trainer, training_args, results, start_time=start, metric_key=f"{prefix}_bleu", metric_name="BLEU",
        evaluate_fn=bleu_of if predict else None,
        prune_fractions=data_args.prune_fractions if (predict and data_args.prune_fractions) else (),
        recipe={"num_beams": data_args.num_beams}, summary=summary if predict else None)


def spread_indices(length: int, n: int) -> list[int]:
    """``min(n, length)`` row indices evenly spread over ``range(length)``, first and last included."""
    if n >= length:
        return list(range(length))
    if n <= 1:
        return [0][:n]
    return sorted({round(i * (length - 1) / (n - 1)) for i in range(n)})


def example_indices(references: list[str], n: int) -> list[int]:
    """``n`` example rows spread over the split, preferring sentences of 5 to 20 words."""
    fitting = [i for i, r in enumerate(references) if 5 <= len(r.split()) <= 20] or list(range(len(references)))
    if not fitting:
        return []
    step = max(1, len(fitting) // n)
    return fitting[::step][:n]


def translation_summary(results: dict[str, Any], prefix: str, examples: list[tuple[str, str, str]],
                        output_dir: str) -> str:
    """The lines a person reads at the end of a run: BLEU (before -> after), sparsity, prune curve, examples."""
    split = results.get("dataset_split", prefix)
    bleu, chrf = results[f"{prefix}_bleu"], results[f"{prefix}_chrf"]
    lines = [f"{results.get('dataset_name')} {split} ({results.get(f'{prefix}_samples', '?')} "
             f"sentences), sacreBLEU 13a, beam {results.get('training', {}).get('num_beams', '?')}:"]
    if "before_bleu" in results:
        lines.append(f"  BLEU {results['before_bleu']:.2f} -> {bleu:.2f}   chrF {results['before_chrf']:.2f} -> "
                     f"{chrf:.2f}   (starting model -> trained)")
    else:
        lines.append(f"  BLEU {bleu:.2f}   chrF {chrf:.2f}")
    note = f" on {results.get('prune_eval_samples', '?')} of these sentences, spread over the split"
    lines += common.summary_lines(results, metric_name="BLEU", prune_note=note)
    for source, hypothesis, reference in examples:
        lines += [f"  DE  {source}", f"  MT  {hypothesis}", f"  REF {reference}"]
    return common.framed(lines, output_dir,
                         "model, README.md card, all_results.json, generated_predictions.txt, plots/")


if __name__ == "__main__":
    main()
