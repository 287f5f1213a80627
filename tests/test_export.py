"""``hf-soft-diamond export``: prune at the knee, write a compressed checkpoint, load it back.

Every check is against an independent reference: the pruned model is computed here by a
separate simple path (``torch.kthvalue`` on the concatenated magnitudes of the weights a
plain ``ndim >= 2``, no-norm rule picks), the bitmask against numpy's ``packbits``, BLEU
by sacrebleu on this file's own generations, accuracy by this file's own normalization
and forward pass, the knee against a curve computed by hand.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PAD, VOCAB, tiny_marian
from hf_soft_diamond.export import (
    FORMAT_NAME,
    MANIFEST_NAME,
    SPARSE_WEIGHTS_NAME,
    decode_sparse_state_dict,
    encode_sparse_state_dict,
    load_sparse_pretrained,
)
from hf_soft_diamond.tasks import cli
from hf_soft_diamond.tasks import export as ex
from hf_soft_diamond.tasks.models import build_image_model

# --------------------------------------------------------------------------- references


def simple_names(model: torch.nn.Module) -> list[str]:
    """Trainable weights with ndim >= 2 outside norm layers (the default selection, written out plainly)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower()]


def reference_prune(model: torch.nn.Module, fraction: float) -> tuple[torch.nn.Module, int]:
    """A pruned deep copy: zero the k = floor(f * N) smallest |w| (found by kthvalue; weights have no ties)."""
    ref = copy.deepcopy(model).eval()
    names = simple_names(ref)
    params = dict(ref.named_parameters())
    mags = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
    k = math.floor(fraction * mags.numel())
    if k == 0:
        return ref, 0
    kth = torch.kthvalue(mags, k).values
    assert int((mags <= kth).sum()) == k, "test weights must have no ties at the cut-off"
    with torch.no_grad():
        for n in names:
            params[n][params[n].abs() <= kth] = 0.0
    return ref, k


def zeros_per_tensor(model: torch.nn.Module) -> dict[str, int]:
    return {n: int((t == 0).sum()) for n, t in model.state_dict().items() if t.is_floating_point()}


def tiny_tokenizer():
    """A word-level tokenizer for tiny_marian's 50 ids: </s>=0, <unk>=1, w2..w48, <pad>=49."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"</s>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, VOCAB - 1)}, "<pad>": PAD}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


CURVE = [{"fraction": 0.0, "metric": 30.0}, {"fraction": 0.5, "metric": 29.5}, {"fraction": 0.7, "metric": 29.0},
         {"fraction": 0.8, "metric": 28.9}, {"fraction": 0.9, "metric": 29.2}, {"fraction": 0.95, "metric": 20.0}]


def make_run(path: Path, model: torch.nn.Module, results: dict, tokenizer=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    base = {"regularizer": {"regularizer": "sas", "reg_include_embeddings": True}, "prune_curve": CURVE,
            "dataset_split": "test"}
    (path / "all_results.json").write_text(json.dumps({**base, **results}))
    return path


def marian_run(tmp_path: Path, **results) -> Path:
    return make_run(tmp_path / "run", tiny_marian(seed=3), {"task": "translation", "language_pair": "de-en",
                                                            **results}, tiny_tokenizer())


def tiny_resnet(**kwargs):
    return build_image_model("resnet", "tiny", num_labels=10, image_size=8, num_channels=1, seed=5, **kwargs)


def image_results(**extra) -> dict:
    return {"task": "image-classification", "dataset_name": "digits", "image_shape": [1, 8, 8],
            "training": {"augmentation": {"normalize": True}}, **extra}


def export(run: Path, out: Path, *args: str) -> dict:
    return cli_main(["export", str(run), str(out), *args])


def cli_main(argv: list[str]) -> dict:
    cli.main(argv)
    return json.loads((Path(argv[2]) / MANIFEST_NAME).read_text())


# --------------------------------------------------------------------------- knee


@pytest.mark.parametrize("tolerance, knee", [(1.0, 0.9), (0.5, 0.5), (0.0, 0.0), (1.1, 0.9), (10.0, 0.95)])
def test_knee_is_the_largest_fraction_within_tolerance_of_the_unpruned_metric(tolerance, knee):
    # by hand: baseline 30; within 1 -> 0.5 (29.5), 0.7 (29.0, inclusive), 0.9 (29.2); 0.8 (28.9) fails
    assert ex.knee_fraction(CURVE, tolerance) == knee


def test_plan_takes_the_knee_from_the_runs_curve(tmp_path):
    run = make_run(tmp_path / "run", tiny_resnet(), image_results())
    assert ex.plan_export(run, tmp_path / "out", prune="knee", tolerance=1.0).fraction == 0.9
    assert ex.plan_export(run, tmp_path / "out", prune="knee", tolerance=0.5).fraction == 0.5
    assert ex.plan_export(run, tmp_path / "out", prune="0.3").fraction == 0.3


# --------------------------------------------------------------------------- the encoding


def test_bitmask_encoding_round_trips_and_matches_numpy_packbits():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 13, generator=g)
    w[w.abs() < 0.8] = 0.0
    w[0, 0], w[0, 1], w[1, 2] = float("nan"), float("inf"), -0.0
    dense = torch.randn(5, 5, generator=g)  # no zeros: stays dense
    ints = torch.arange(10)
    tensors, meta = encode_sparse_state_dict({"w": w, "dense": dense, "ints": ints})
    assert set(tensors) == {"w.bitmask", "w.values", "dense", "ints"}
    expect_bits = np.packbits((w.numpy() != 0).reshape(-1))
    assert np.array_equal(tensors["w.bitmask"].numpy(), expect_bits)
    assert tensors["w.values"].numel() == int(np.count_nonzero(w.numpy()))
    back = decode_sparse_state_dict(tensors, meta)
    assert torch.equal(back["dense"], dense) and torch.equal(back["ints"], ints)
    assert back["w"].shape == w.shape and torch.allclose(back["w"], w, equal_nan=True, rtol=0, atol=0)
    assert int((back["w"] == 0).sum()) == int((w == 0).sum())


def test_half_precision_storage_keeps_the_zeros_and_rounds_the_values():
    w = torch.randn(40, 40, generator=torch.Generator().manual_seed(1))
    w[w.abs() < 1.0] = 0
    for dtype in (torch.float16, torch.bfloat16):
        back = decode_sparse_state_dict(*encode_sparse_state_dict({"w": w}, dtype=dtype), dtype=torch.float32)
        assert torch.equal(back["w"], w.to(dtype).float())


# --------------------------------------------------------------------------- round trips


def test_marian_export_loads_back_with_the_pruned_models_weights_logits_and_generations(tmp_path):
    run = marian_run(tmp_path)
    model = tiny_marian(seed=3).eval()
    reference, k = reference_prune(model, 0.7)
    manifest = export(run, tmp_path / "out", "--prune", "0.7", "--no_verify")
    assert manifest["prune"]["num_pruned"] == k and manifest["format"] == FORMAT_NAME
    loaded = load_sparse_pretrained(tmp_path / "out")
    ref_sd, got_sd = reference.state_dict(), loaded.state_dict()
    assert all(torch.equal(ref_sd[n], got_sd[n]) for n in ref_sd)
    assert zeros_per_tensor(loaded) == zeros_per_tensor(reference)
    ids = torch.randint(1, VOCAB - 1, (3, 8), generator=torch.Generator().manual_seed(2))
    dec = torch.randint(1, VOCAB - 1, (3, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, decoder_input_ids=dec).logits,
                           reference(input_ids=ids, decoder_input_ids=dec).logits)
        assert torch.equal(loaded.generate(input_ids=ids), reference.generate(input_ids=ids))
    # what ships beside the weights
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md", MANIFEST_NAME,
            SPARSE_WEIGHTS_NAME} <= names and "model.safetensors" not in names
    assert (tmp_path / "out" / SPARSE_WEIGHTS_NAME).stat().st_size < manifest["size_bytes"]["dense_float32"]
    # plain from_pretrained refuses the sparse folder instead of initialising weights at random
    from transformers import MarianMTModel

    with pytest.raises(OSError):
        MarianMTModel.from_pretrained(tmp_path / "out")


def test_dense_format_loads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForImageClassification

    run = make_run(tmp_path / "run", tiny_resnet(), image_results())
    reference, k = reference_prune(tiny_resnet(), 0.6)
    export(run, tmp_path / "out", "--prune", "0.6", "--format", "dense", "--no_verify")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, reference(pixel_values=x).logits)
    assert zeros_per_tensor(loaded) == zeros_per_tensor(reference)


def test_vit_export_round_trip(tmp_path):
    vit = build_image_model("vit", "tiny", num_labels=10, image_size=8, num_channels=1, seed=4)
    run = make_run(tmp_path / "run", vit, image_results())
    reference, _ = reference_prune(vit, 0.9)
    export(run, tmp_path / "out", "--prune", "knee", "--no_verify")  # knee of CURVE at 1 point: 0.9
    loaded = load_sparse_pretrained(tmp_path / "out")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, reference(pixel_values=x).logits)
    assert zeros_per_tensor(loaded) == zeros_per_tensor(reference)


def test_resnet_with_dropout_and_without_batch_norm_ships_as_the_standard_tree(tmp_path):
    from transformers import AutoModelForImageClassification

    odd = tiny_resnet(dropout=0.3, batch_norm=False)
    run = make_run(tmp_path / "run", odd, image_results())
    reference, _ = reference_prune(odd, 0.5)  # the run's own module tree, pruned here
    export(run, tmp_path / "out", "--prune", "0.5", "--format", "dense", "--no_verify")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, reference(pixel_values=x).logits)


def test_float16_storage_is_smaller_and_loads_as_float32(tmp_path):
    run = make_run(tmp_path / "run", tiny_resnet(), image_results())
    reference, _ = reference_prune(tiny_resnet(), 0.5)
    m32 = export(run, tmp_path / "out32", "--prune", "0.5", "--no_verify")
    m16 = export(run, tmp_path / "out16", "--prune", "0.5", "--no_verify", "--dtype", "float16")
    assert m16["size_bytes"]["exported"] < 0.75 * m32["size_bytes"]["exported"]
    loaded = load_sparse_pretrained(tmp_path / "out16")
    for name, ref in reference.state_dict().items():
        got = loaded.state_dict()[name]
        expect = ref.half().float() if ref.is_floating_point() else ref
        assert got.dtype == expect.dtype and torch.equal(got, expect), name


def padding_only_by_gradient(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The convolution weight entries no input reaches, found without shape arithmetic: each
    convolution is fed random inputs of the size reaching it in the model (no zeros, so no dead
    ReLU can hide a live tap) and its entries with an exactly zero weight gradient are kept."""
    sizes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            sizes.setdefault(name, inputs[0].shape)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(pixel_values=torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    g = torch.Generator().manual_seed(11)
    modules = dict(model.named_modules())
    dead = {}
    for name, size in sizes.items():
        conv = copy.deepcopy(modules[name])
        out = conv(torch.rand(4, *size[1:], generator=g) + 0.5)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        if bool((conv.weight.grad == 0).any()):
            dead[f"{name}.weight"] = conv.weight.grad == 0
    return dead


def test_live_weights_export_zeroes_the_padding_only_taps_and_prunes_a_fraction_of_the_rest(tmp_path, capsys):
    live_curve = [{"fraction": 0.0, "metric": 30.0}, {"fraction": 0.5, "metric": 29.6},
                  {"fraction": 0.7, "metric": 27.0}]
    run = make_run(tmp_path / "run", tiny_resnet(), image_results(prune_curve_live=live_curve))
    manifest = export(run, tmp_path / "out", "--prune", "knee", "--weights", "live", "--no_verify")
    assert manifest["prune"]["fraction"] == 0.5  # the knee of the live curve (CURVE's is 0.9)
    # reference: the gradient-dead entries zeroed, then floor(0.5 * live) smallest |w| of the rest (no ties)
    original = tiny_resnet()
    dead = padding_only_by_gradient(original, (1, 8, 8))
    params = dict(original.named_parameters())
    names = simple_names(original)
    live = torch.cat([params[n].detach()[~dead[n]] if n in dead else params[n].detach().reshape(-1) for n in names])
    k = math.floor(0.5 * live.numel())
    kth = torch.kthvalue(live.abs(), k).values
    n_dead = sum(int(m.sum()) for m in dead.values())
    assert 0 < n_dead and manifest["prune"]["padding_only_zeroed"] == n_dead
    assert (manifest["prune"]["num_regularized"], manifest["prune"]["num_pruned"]) == (live.numel(), k)
    loaded = load_sparse_pretrained(tmp_path / "out")
    got = dict(loaded.named_parameters())
    live_pruned = copy.deepcopy(original).eval()  # the live weights pruned, the padding-only ones left as trained
    with torch.no_grad():
        for n, p in dict(live_pruned.named_parameters()).items():
            if n in names:
                expect = params[n].detach().clone()
                mask = expect.abs() <= kth
                if n in dead:
                    mask &= ~dead[n]
                expect[mask] = 0.0
                p.copy_(expect)
                if n in dead:
                    expect[dead[n]] = 0.0
                assert torch.equal(got[n], expect), n
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # zeroing the padding-only taps changed no output
        torch.testing.assert_close(loaded(pixel_values=x).logits, live_pruned(pixel_values=x).logits,
                                   rtol=1e-5, atol=1e-6)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "of the live regularized weights" in card and f"{n_dead:,} regularized weights that only ever" in card
    capsys.readouterr()
    export(run, tmp_path / "plain", "--prune", "0.5", "--no_verify")  # the default counts every weight, and says so
    assert "`--weights live` zeroes them" in capsys.readouterr().out


# --------------------------------------------------------------------------- verification


def test_image_export_verifies_accuracy_on_the_validation_split(tmp_path):
    from hf_soft_diamond.tasks.data.images import load_digits_dataset

    pytest.importorskip("sklearn")
    model = tiny_resnet()
    run = make_run(tmp_path / "run", model, image_results())
    manifest = export(run, tmp_path / "out", "--prune", "0.5")
    reference, _ = reference_prune(model, 0.5)
    splits = load_digits_dataset()
    train = splits["train"].images.double() / 255
    mean, std = train.mean().item(), train.std(unbiased=False).item()

    def acc(m):
        x = ((splits["validation"].images.float() / 255) - torch.tensor(mean)) / torch.tensor(std)
        with torch.no_grad():
            hits = int((m(pixel_values=x).logits.argmax(-1) == splits["validation"].labels).sum())
        return 100.0 * hits / len(splits["validation"])

    ver = manifest["verification"]
    assert ver["split"] == "validation" and ver["n_examples"] == len(splits["validation"]) == 180
    assert ver["before"] == pytest.approx(acc(model.eval()), abs=1e-9)
    assert ver["after"] == pytest.approx(acc(reference), abs=1e-9)
    assert manifest["preprocessing"]["mean"] == pytest.approx([mean]) and "accuracy" in (
        tmp_path / "out" / "README.md").read_text()


def test_translation_export_verifies_bleu_on_a_validation_file(tmp_path):
    import sacrebleu

    tok = tiny_tokenizer()
    run = marian_run(tmp_path)
    model = tiny_marian(seed=3).eval()
    reference, _ = reference_prune(model, 0.5)
    g = torch.Generator().manual_seed(7)
    sources = [" ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB - 1, (6,), generator=g)) for _ in range(12)]

    def hyps(m):
        enc = tok(sources, return_tensors="pt")  # equal lengths: no padding
        with torch.no_grad():
            return [h.strip() for h in tok.batch_decode(m.generate(**enc), skip_special_tokens=True)]

    references = hyps(model)  # so the unpruned model scores 100 and pruning can only lose
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"de": s, "en": r}) + "\n" for s, r in zip(sources, references)))
    manifest = export(run, tmp_path / "out", "--prune", "0.5", "--validation_file", str(valid))
    ver = manifest["verification"]
    bleu = sacrebleu.BLEU(tokenize="13a")
    assert ver["before"] == pytest.approx(bleu.corpus_score(hyps(model), [references]).score, abs=1e-9)
    assert ver["after"] == pytest.approx(bleu.corpus_score(hyps(reference), [references]).score, abs=1e-9)
    assert ver["data_source"]["validation_file"] == "argument" and ver["n_examples"] == 12
    # the card's table survives the '|' of the sacrebleu signature: two columns on every row
    rows = [line for line in (tmp_path / "out" / "README.md").read_text().splitlines() if line.startswith("|")]
    assert any("nrefs:1" in r for r in rows) and all(len(re.findall(r"(?<!\\)\|", r)) == 3 for r in rows)


# --------------------------------------------------------------------------- bad inputs


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the export started working on bad input")

    monkeypatch.setattr(ex, "load_run_model", boom)


@pytest.mark.parametrize("case, flags, message", [
    ("no_results", ["--prune", "0.5"], "all_results.json"),
    ("no_curve", ["--prune", "knee"], "--prune knee"),
    ("fine", ["--prune", "1.0"], "--prune"),
    ("fine", ["--prune", "-0.1"], "--prune"),
    ("fine", ["--prune", "half"], "--prune"),
    ("fine", ["--prune", "knee", "--tolerance", "-1"], "--tolerance"),
    ("fine", ["--prune", "knee", "--weights", "live"], "prune_curve_live"),
    ("fine", ["--prune", "0.5", "--weights", "some"], "--weights"),
    ("out_not_empty", ["--prune", "0.5"], "OUT_DIR"),
    ("out_inside_run", ["--prune", "0.5"], "OUT_DIR"),
    ("no_model", ["--prune", "0.5"], "RUN_DIR"),
    ("missing_run_config", ["--prune", "0.5", "--run_config", "nope.json"], "--run_config"),
])
def test_bad_inputs_fail_before_any_work_naming_the_argument(tmp_path, monkeypatch, capsys, case, flags, message):
    run = make_run(tmp_path / "run", tiny_resnet(), image_results())
    out = tmp_path / "out"
    if case == "no_results":
        (run / "all_results.json").unlink()
    elif case == "no_curve":
        (run / "all_results.json").write_text(json.dumps(image_results()))
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out_inside_run":
        out = run / "export"
    elif case == "no_model":
        (run / "model.safetensors").unlink()
    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as err:
        cli.main(["export", str(run), str(out), *flags])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    if case == "out_not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    elif case != "out_inside_run":
        assert not out.exists()


def test_verification_data_that_cannot_be_found_is_named_with_the_way_out(tmp_path, capsys):
    run = marian_run(tmp_path, dataset_name="my_corpus_train")  # a --train_file run records the file's stem
    with pytest.raises(SystemExit) as err:
        cli.main(["export", str(run), str(tmp_path / "out"), "--prune", "0.5"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "my_corpus_train" in message and "--validation_file" in message and "--no_verify" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failing_export_leaves_no_half_written_out_dir(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", tiny_resnet(), image_results())

    def fail(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "render_export_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export(run, tmp_path / "out", "--prune", "0.5", "--no_verify")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no OUT_DIR, no staging folder
    # an existing OUT_DIR with --overwrite stays as it was when the export fails
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        export(run, tmp_path / "out", "--prune", "0.5", "--no_verify", "--overwrite")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    monkeypatch.undo()
    export(run, tmp_path / "out", "--prune", "0.5", "--no_verify", "--overwrite")
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / SPARSE_WEIGHTS_NAME).is_file()


def test_export_help():
    with pytest.raises(SystemExit) as err:
        cli.main(["export", "--help"])
    assert err.value.code == 0
