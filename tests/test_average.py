"""Checkpoint averaging against the arithmetic mean computed directly from the saved files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_marian


def _fake_run(tmp_path, steps=(100, 200, 300, 400)):
    run = tmp_path / "run"
    for i, step in enumerate(steps):
        folder = run / f"checkpoint-{step}"
        tiny_marian(seed=i).save_pretrained(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "checkpoint-500").mkdir()  # incomplete (no trainer_state.json): never used
    return run


def test_average_of_the_last_checkpoints_is_the_mean_of_their_weights(tmp_path):
    from hf_soft_diamond.tasks.run.average import last_checkpoints, main

    run = _fake_run(tmp_path)
    chosen = last_checkpoints(run, 3)
    assert [p.name for p in chosen] == ["checkpoint-200", "checkpoint-300", "checkpoint-400"]
    out = main([str(run), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    averaged = load_file(out / "model.safetensors")
    files = [load_file(p / "model.safetensors") for p in chosen]
    for key, value in averaged.items():
        expected = torch.stack([f[key].double() for f in files]).mean(0).float()
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.model.shared.weight.data_ptr() == model.lm_head.weight.data_ptr() or \
        torch.equal(model.model.shared.weight, model.lm_head.weight)  # still tied


def test_float16_output_and_bad_inputs(tmp_path):
    from hf_soft_diamond.tasks.run.average import main

    run = _fake_run(tmp_path)
    out = main([str(run), "--last", "2", "--output_dir", str(tmp_path / "half"), "--dtype", "float16"])
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    with pytest.raises(ValueError, match="holds 4 complete checkpoints, fewer than `last`=9"):
        main([str(run), "--last", "9", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="`output_dir` .* exists and is not empty"):
        main([str(run), "--last", "2", "--output_dir", str(out)])
    assert not (tmp_path / "x").exists()
