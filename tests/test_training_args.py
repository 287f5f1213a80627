"""SoftDiamond*TrainingArguments: CLI and JSON parsing, defaults, validation at construction."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

from hf_soft_diamond.regularizers import PWDRegularizer, SaSRegularizer
from hf_soft_diamond.training_args import (
    SoftDiamondArgumentsMixin,
    SoftDiamondSeq2SeqTrainingArguments,
    SoftDiamondTrainingArguments,
    natural_mode,
)

ARG_CLASSES = (SoftDiamondTrainingArguments, SoftDiamondSeq2SeqTrainingArguments)
MIXIN_FIELDS = [f.name for f in dataclasses.fields(SoftDiamondArgumentsMixin)]


def make(cls=SoftDiamondTrainingArguments, **kwargs):
    kwargs.setdefault("output_dir", "unused")
    kwargs.setdefault("report_to", [])
    return cls(**kwargs)


@pytest.mark.parametrize("cls", ARG_CLASSES)
def test_mro_and_fields(cls):
    base = Seq2SeqTrainingArguments if cls is SoftDiamondSeq2SeqTrainingArguments else TrainingArguments
    assert issubclass(cls, base) and issubclass(cls, SoftDiamondArgumentsMixin)
    names = [f.name for f in dataclasses.fields(cls)]
    own = ["max_tokens_per_batch"] if cls is SoftDiamondSeq2SeqTrainingArguments else []
    assert names[-len(MIXIN_FIELDS) - len(own):] == MIXIN_FIELDS + own  # the Trainer's fields first, ours after
    for f in dataclasses.fields(SoftDiamondArgumentsMixin):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f.name
        assert f"{f.name} (`" in SoftDiamondArgumentsMixin.__doc__, f"{f.name} missing from the docstring"
    args = make(cls)
    assert args.regularizer == "none" and args.reg_mode is None and args.sparsity_thresholds == [1e-8, 1e-3, 1e-2]
    assert (args.sas_alpha, args.sas_gamma) == (1.5, 0.5)


@pytest.mark.parametrize("cls", ARG_CLASSES)
def test_parse_from_cli(cls):
    parser = HfArgumentParser(cls)
    (args,) = parser.parse_args_into_dataclasses(args=[
        "--output_dir", "out", "--report_to", "none", "--regularizer", "sas", "--reg_strength", "1e-4",
        "--sas_alpha", "0.5", "--sas_gamma", "0.25", "--reg_mode", "decoupled", "--reg_include", "encoder", "fc\\d",
        "--reg_exclude", "embed", "--no_reg_include_embeddings", "--sparsity_thresholds", "0", "1e-3",
        "--reg_fused_backend", "eager", "--reg_on_nonfinite", "warn", "--reg_kwargs", '{"score_path": "table"}',
        "--model_accepts_loss_kwargs", "false", "--learning_rate", "3e-4",
    ])
    assert isinstance(args, cls)
    assert (args.regularizer, args.reg_strength, args.sas_alpha, args.sas_gamma) == ("sas", 1e-4, 0.5, 0.25)
    assert args.reg_mode == "decoupled" and args.reg_include == ["encoder", "fc\\d"] and args.reg_exclude == ["embed"]
    assert args.reg_include_embeddings is False and args.sparsity_thresholds == [0.0, 1e-3]
    assert args.reg_on_nonfinite == "warn" and args.reg_kwargs == {"score_path": "table"}
    assert args.model_accepts_loss_kwargs is False and args.learning_rate == 3e-4
    reg = args.build_regularizer()
    assert isinstance(reg, SaSRegularizer)
    assert (reg.strength, reg.mode, reg.alpha, reg.gamma, reg.score_path) == (1e-4, "decoupled", 0.5, 0.25, "table")
    assert args.selection_kwargs() == {"include": ["encoder", "fc\\d"], "exclude": ["embed"],
                                       "include_embeddings": False}


def test_parse_from_json_file_and_round_trip(tmp_path):
    config = {"output_dir": str(tmp_path / "run"), "report_to": [], "regularizer": "pwd", "reg_strength": 1e-3,
              "lp_p": 0.8, "pwd_l2_strength": 1e-4, "pwd_p_start": 1.5, "pwd_p_schedule_steps": 100,
              "reg_include": ["\\.weight$"], "sparsity_thresholds": [1e-8, 1e-2], "predict_with_generate": True}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    (args,) = HfArgumentParser(SoftDiamondSeq2SeqTrainingArguments).parse_json_file(str(path))
    assert args.predict_with_generate is True and args.resolved_reg_mode == "decoupled"
    reg = args.build_regularizer()
    assert isinstance(reg, PWDRegularizer)
    assert (reg.strength, reg.p, reg.l2_strength, reg.p_start, reg.p_schedule_steps) == (1e-3, 0.8, 1e-4, 1.5, 100)
    # to_dict() -> parse_dict() gives the same regularizer fields back
    dumped = {k: v for k, v in args.to_dict().items() if k in MIXIN_FIELDS}
    (again,) = HfArgumentParser(SoftDiamondSeq2SeqTrainingArguments).parse_dict(
        {**dumped, "output_dir": str(tmp_path / "run"), "report_to": []})
    assert {k: getattr(again, k) for k in MIXIN_FIELDS} == {k: getattr(args, k) for k in MIXIN_FIELDS}


# The paper form under SGD; decoupled under every Adam-family optimizer (pwd: decoupled only).
SGD_MODES = {"none": "coupled", "l1": "coupled", "l2": "coupled", "lp": "coupled", "sas": "coupled",
             "pwd": "decoupled", "weighted_alpha": "coupled", "stable_rank": "coupled",
             "powerlaw_prior": "coupled", "frechet_prior": "coupled"}


@pytest.mark.parametrize("name", sorted(SGD_MODES))
@pytest.mark.parametrize("optim, family", [("sgd", "sgd"), ("adamw_torch", "adaptive"),
                                           ("adamw_torch_fused", "adaptive"), ("adafactor", "adaptive"),
                                           ("rmsprop", "adaptive"), ("schedule_free_sgd", "sgd")])
def test_natural_mode_follows_the_optimizer(name, optim, family):
    expected = SGD_MODES[name] if family == "sgd" else "decoupled"
    assert natural_mode(name, optim) == expected
    args = make(regularizer=name, reg_strength=1e-3, optim=optim)
    assert args.reg_mode is None and args.optimizer_family == family and args.resolved_reg_mode == expected


def test_fused_optimizer_resolves_to_decoupled():
    args = make(regularizer="sas", reg_strength=1e-3, optim="adamw_torch", reg_fused_optimizer=True)
    assert args.resolved_reg_mode == "decoupled"
    assert make(regularizer="sas", reg_strength=1e-3, optim="sgd", reg_mode="coupled").resolved_reg_mode == "coupled"


BAD = [
    ({"regularizer": "elastic"}, "`regularizer`"),
    ({"regularizer": "sas", "reg_strength": -1e-3}, "`reg_strength`"),
    ({"regularizer": "l2", "reg_strength": float("nan")}, "`reg_strength`"),
    ({"regularizer": "sas", "sas_alpha": 0.0}, "`sas_alpha`"),
    ({"regularizer": "sas", "sas_alpha": 2.5}, "`sas_alpha`"),
    ({"regularizer": "sas", "sas_alpha": -1.0}, "`sas_alpha`"),
    ({"regularizer": "sas", "sas_gamma": 0.0}, "`sas_gamma`"),
    ({"regularizer": "sas", "sas_gamma": -0.5}, "`sas_gamma`"),
    ({"regularizer": "pwd", "lp_p": 0.0}, "`lp_p`"),
    ({"regularizer": "pwd", "lp_p": 2.5}, "`lp_p`"),
    ({"regularizer": "lp", "lp_p": 3.0}, "`lp_p`"),
    ({"regularizer": "lp", "lp_eps": 0.0}, "`lp_eps`"),
    ({"regularizer": "pwd", "lp_p": 1.0, "pwd_p_start": 0.5}, "`pwd_p_start`"),
    ({"regularizer": "pwd", "pwd_p_schedule_steps": -1}, "`pwd_p_schedule_steps`"),
    ({"regularizer": "pwd", "pwd_l2_strength": -1.0}, "`pwd_l2_strength`"),
    ({"regularizer": "pwd", "reg_mode": "coupled"}, "`reg_mode`"),
    ({"regularizer": "sas", "reg_mode": "both"}, "`reg_mode`"),
    ({"sparsity_thresholds": [-1e-3]}, "`sparsity_thresholds`"),
    ({"sparsity_thresholds": [float("nan")]}, "`sparsity_thresholds`"),
    ({"sparsity_thresholds": [float("inf")]}, "`sparsity_thresholds`"),
    ({"sparsity_thresholds": ["tiny"]}, "`sparsity_thresholds`"),
    ({"sparsity_thresholds": [1e-3, 1e-3]}, "`sparsity_thresholds`"),
    ({"sparsity_thresholds": [1e-3, 1.2e-3]}, "`sparsity_thresholds`"),  # both would log as le_1e-03
    ({"reg_include": ["("]}, "`reg_include`"),
    ({"reg_exclude": ["[a-"]}, "`reg_exclude`"),
    ({"reg_fused_backend": "fast"}, "`reg_fused_backend`"),
    ({"reg_on_nonfinite": "ignore"}, "`reg_on_nonfinite`"),
    ({"reg_check_finite_every": -1}, "`reg_check_finite_every`"),
    ({"regularizer": "sas", "reg_kwargs": '{"bogus": 1}'}, "`reg_kwargs`"),
    ({"regularizer": "sas", "reg_kwargs": {"alpha": 1.0}}, "`reg_kwargs`"),
    ({"regularizer": "sas", "reg_kwargs": "{not json"}, "`reg_kwargs`"),
    ({"regularizer": "sas", "reg_kwargs": {"score_path": "slow"}}, "`sas_score_path`"),
]


@pytest.mark.parametrize("kwargs, arg", BAD, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD)])
@pytest.mark.parametrize("cls", ARG_CLASSES)
def test_bad_values_raise_at_construction_naming_the_argument(cls, kwargs, arg):
    with pytest.raises(ValueError) as err:
        make(cls, **kwargs)
    assert arg in str(err.value)


def test_bad_values_raise_when_parsing_the_cli():
    parser = HfArgumentParser(SoftDiamondTrainingArguments)
    with pytest.raises(ValueError, match="`sas_alpha`.*\\(0.0, 2.0\\]"):
        parser.parse_args_into_dataclasses(args=["--output_dir", "o", "--regularizer", "sas", "--sas_alpha", "2.1"])
    with pytest.raises(ValueError, match="`regularizer` must be one of"):
        parser.parse_args_into_dataclasses(args=["--output_dir", "o", "--regularizer", "l3"])


def test_fields_of_other_regularizers_are_ignored():
    args = make(regularizer="l2", reg_strength=1e-2, sas_alpha=0.5, lp_p=0.3)
    # mode None: the regularizer takes its mode from the optimizer it is attached to
    assert args.regularizer_kwargs() == {"strength": 1e-2, "mode": None, "fused_backend": "auto"}


def test_weight_decay_with_a_regularizer_warns_and_points_at_l2_decoupled():
    with pytest.warns(UserWarning, match="--regularizer l2 --reg_mode decoupled"):
        make(regularizer="sas", reg_strength=1e-3, weight_decay=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(regularizer="none", weight_decay=0.01)  # plain weight decay: nothing to say
        make(regularizer="sas", reg_strength=1e-3, weight_decay=0.0)


def test_zero_strength_warns():
    with pytest.warns(UserWarning, match="does nothing"):
        make(regularizer="l1")


def test_json_string_kwargs_and_empty_thresholds():
    args = make(regularizer="sas", reg_strength=1.0, reg_kwargs='{"score_path": "table"}', sparsity_thresholds=[])
    assert args.reg_kwargs == {"score_path": "table"} and args.sparsity_thresholds == []
    assert math.isclose(args.build_regularizer().strength, 1.0)


def test_validating_the_arguments_builds_no_table_and_writes_nothing(tmp_path, monkeypatch):
    """Parsing arguments has no side effects: the SaS table of a new alpha is neither built nor
    written to the disk cache until a step needs it; a bad alpha still fails in the arguments."""
    from hf_soft_diamond import SoftDiamondTrainingArguments
    from hf_soft_diamond.priors.sas import cache as sas_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_SOFT_DIAMOND_CACHE", str(cache))
    monkeypatch.setattr(sas_cache, "_MEMORY", {})
    args = SoftDiamondTrainingArguments(output_dir=str(tmp_path / "out"), regularizer="sas", reg_strength=1e-3,
                                        sas_alpha=0.77, report_to=[], use_cpu=True)
    regularizer = args.build_regularizer()
    assert not sas_cache._MEMORY and not (cache.exists() and any(cache.rglob("*")))
    with pytest.raises(ValueError, match="sas_alpha"):
        SoftDiamondTrainingArguments(output_dir=str(tmp_path / "bad"), regularizer="sas", reg_strength=1e-3,
                                     sas_alpha=2.5, report_to=[], use_cpu=True)
    assert regularizer.table.alpha == 0.77  # first use: built and cached now
    assert sas_cache._MEMORY and any(cache.rglob("*"))
