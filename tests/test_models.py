"""Config-built Marian translation models: named sizes, shared embeddings, generation, reload."""

from __future__ import annotations

import pytest
import torch

from hf_soft_diamond.tasks.data.translation import train_translation_tokenizer
from hf_soft_diamond.tasks.metrics import compute_bleu
from hf_soft_diamond.tasks.models import (
    TRANSLATION_MODEL_SIZES,
    build_translation_model,
    load_translation_model,
    translation_config,
)

PAIRS = [
    ("Das Licht ging plötzlich an.", "The light came on suddenly."),
    ("Wer mag es ihm gesagt haben?", "Who might have told him?"),
    ("Die Wand ist sehr hellhörig.", "You can hear everything through that wall."),
    ("Das geschieht ihm recht.", "That serves him right."),
    ("Hast du so etwas schon einmal gehört?", "Did you ever hear the like?"),
    ("Der Ausschuss ist nicht beschlussfähig.", "A quorum of the committee is not present."),
    ("Eine Dame nahm mich im Foyer in Empfang.", "A lady received me in the foyer."),
    ("Dieses Buch verdient eine sorgfältige Lektüre.", "This book deserves careful perusal."),
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [s for pair in PAIRS for s in pair] * 20
    return train_translation_tokenizer(texts, vocab_size=400, min_frequency=1)


def test_named_sizes():
    assert set(TRANSLATION_MODEL_SIZES) == {"micro", "tiny", "small", "iwslt"}
    iwslt = TRANSLATION_MODEL_SIZES["iwslt"]
    assert (iwslt["encoder_layers"], iwslt["decoder_layers"], iwslt["d_model"]) == (6, 6, 512)
    assert (iwslt["encoder_ffn_dim"], iwslt["decoder_ffn_dim"]) == (1024, 1024)
    assert iwslt["encoder_attention_heads"] == iwslt["decoder_attention_heads"] == 4
    tiny = TRANSLATION_MODEL_SIZES["tiny"]
    assert tiny["encoder_layers"] == tiny["decoder_layers"] == 2 and 128 <= tiny["d_model"] <= 256
    with pytest.raises(ValueError, match="unknown size"):
        build_translation_model("huge", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", ["micro", "tiny", "small", "iwslt"])
def test_config_uses_the_tokenizer_ids_and_ties_embeddings(size, tokenizer):
    config = translation_config(size, tokenizer)
    assert config.vocab_size == len(tokenizer) == 400
    assert config.pad_token_id == config.decoder_start_token_id == tokenizer.pad_token_id
    assert config.eos_token_id == config.forced_eos_token_id == tokenizer.eos_token_id
    if size == "iwslt":
        model = build_translation_model(size, tokenizer, seed=0)
        shared = model.get_input_embeddings().weight
        assert model.model.encoder.embed_tokens.weight is shared
        assert model.model.decoder.embed_tokens.weight is shared
        assert model.lm_head.weight is shared
        # 6+6 layers of d=512, FFN 1024 with a 400-token vocabulary (independent count):
        d, f, v = 512, 1024, 400
        attn = 4 * (d * d + d)
        enc_layer = attn + (d * f + f) + (f * d + d) + 2 * 2 * d
        dec_layer = 2 * attn + (d * f + f) + (f * d + d) + 3 * 2 * d
        expected = v * d + 6 * enc_layer + 6 * dec_layer
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
        # plus the frozen sinusoidal position tables of encoder and decoder (512 positions)
        assert sum(p.numel() for p in model.parameters()) == expected + 2 * 512 * d


def test_generation_starts_with_pad_and_stops_at_eos(tokenizer):
    model = build_translation_model("tiny", tokenizer, seed=0).eval()
    batch = tokenizer([PAIRS[0][0], PAIRS[1][0]], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12)
    assert out.shape[0] == 2 and out.shape[1] <= 13
    assert (out[:, 0] == tokenizer.pad_token_id).all()
    for row in out.tolist():
        body = row[1:]
        if tokenizer.eos_token_id in body:
            body = body[: body.index(tokenizer.eos_token_id)]
        assert tokenizer.pad_token_id not in body  # banned after the start token


def test_tiny_model_learns_a_few_sentences(tokenizer):
    torch.manual_seed(0)
    model = build_translation_model("tiny", tokenizer, seed=0, dropout=0.0)
    batch = tokenizer([d for d, _ in PAIRS], text_target=[e for _, e in PAIRS], return_tensors="pt", padding=True)
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(120):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=24)
    predictions = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert compute_bleu(predictions, [e for _, e in PAIRS])["bleu"] > 50


def test_load_translation_model_round_trip(tokenizer, tmp_path):
    model = build_translation_model("tiny", tokenizer, seed=1).eval()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_translation_model(tmp_path / "ckpt").eval()
    assert type(loaded).__name__ == "MarianMTModel"
    assert loaded.generation_config.bad_words_ids == [[tokenizer.pad_token_id]]
    batch = tokenizer([PAIRS[2][0]], text_target=[PAIRS[2][1]], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    # the sinusoidal tables are rebuilt from the config, not saved: they must not train
    positions = {n for n, p in loaded.named_parameters() if "embed_positions" in n}
    assert positions and not any(p.requires_grad for n, p in loaded.named_parameters() if n in positions)
    assert all(p.requires_grad for n, p in loaded.named_parameters() if n not in positions)


# ----------------------------------------------------------------------------- image models

from hf_soft_diamond.tasks.models import IMAGE_MODEL_SIZES, build_image_model, load_image_model  # noqa: E402


@pytest.mark.parametrize("arch", ["resnet", "vit"])
@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3), (100, 3)])
def test_image_models_fit_the_paper_input_sizes(arch, image_size, channels):
    import torch

    model = build_image_model(arch, "tiny", num_labels=7, image_size=image_size, num_channels=channels, seed=0)
    out = model(pixel_values=torch.randn(2, channels, image_size, image_size), labels=torch.tensor([0, 6]))
    assert out.logits.shape == (2, 7)
    assert torch.isfinite(out.loss)


def test_resnet_switches_batch_norm_and_dropout():
    import torch

    with_bn = build_image_model("resnet", "tiny", num_labels=3, image_size=28, num_channels=1, seed=0)
    no_bn = build_image_model("resnet", "tiny", num_labels=3, image_size=28, num_channels=1, seed=0,
                              batch_norm=False, dropout=0.5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in no_bn.modules())
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in no_bn.modules())
    vit = build_image_model("vit", "tiny", num_labels=3, image_size=28, num_channels=1, dropout=0.2)
    assert vit.config.hidden_dropout_prob == 0.2 and vit.config.attention_probs_dropout_prob == 0.2


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "mlp"}, "`model_type`"),
    ({"size": "huge"}, "`model_size`"),
    ({"num_labels": 1}, "`num_labels`"),
    ({"num_channels": 2}, "`num_channels`"),
    ({"dropout": 1.0}, "`dropout`"),
    ({"arch": "vit", "batch_norm": False}, "ResNet only"),
])
def test_image_model_errors(kwargs, match):
    args = {"arch": "resnet", "size": "tiny", "num_labels": 10, "image_size": 28, "num_channels": 1, **kwargs}
    arch, size = args.pop("arch"), args.pop("size")
    with pytest.raises(ValueError, match=match):
        build_image_model(arch, size, **args)


def test_image_model_reloads_from_a_saved_checkpoint(tmp_path):
    import torch

    model = build_image_model("vit", "tiny", num_labels=4, image_size=28, num_channels=1, seed=0).eval()
    model.save_pretrained(tmp_path)
    again = load_image_model(str(tmp_path)).eval()
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(model(pixel_values=x).logits, again(pixel_values=x).logits)
    head = load_image_model(str(tmp_path), num_labels=9)
    assert head.config.num_labels == 9
    assert set(IMAGE_MODEL_SIZES) == {"resnet", "vit"}
