"""Runs fail before work and leave nothing half-written; data are named meaningfully."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def test_image_folder_named_after_a_split_is_named_by_its_parent(tmp_path):
    from hf_soft_diamond.tasks.run.image import ImageDataArguments

    for split in ("train", "val"):
        (tmp_path / "cats_vs_dogs" / split / "cat").mkdir(parents=True)
    args = ImageDataArguments(train_dir=str(tmp_path / "cats_vs_dogs" / "train"),
                              validation_dir=str(tmp_path / "cats_vs_dogs" / "val"))
    assert args.data_label == "cats_vs_dogs"
    (tmp_path / "flowers" / "rose").mkdir(parents=True)
    assert ImageDataArguments(train_dir=str(tmp_path / "flowers")).data_label == "flowers"
    labelled = ImageDataArguments(train_dir=str(tmp_path / "flowers"), dataset_label="my-flowers")
    assert labelled.data_label == "my-flowers"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="`train_dir`.*holds no class folders"):
        ImageDataArguments(train_dir=str(tmp_path / "empty"))


def _args(tmp_path, **kw):
    return SimpleNamespace(**{"push_to_hub": True, "hub_token": None, "output_dir": str(tmp_path / "out"),
                              "process_index": 0, **kw})


def test_push_to_hub_without_a_token_fails_first(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from hf_soft_diamond.tasks.run.common import check_before_work

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        check_before_work(_args(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="needs a Hugging Face token.*hf auth login"):
        check_before_work(_args(tmp_path))


def test_push_to_hub_with_an_unreachable_hub_fails_first_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from hf_soft_diamond.tasks.run.common import check_before_work

    def unreachable(self, token=None):
        raise ConnectionError("Failed to establish a new connection\n" + "traceback line\n" * 100)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", unreachable)
    with pytest.raises(ValueError) as info:
        check_before_work(_args(tmp_path, hub_token="hf_xxx"))
    message = str(info.value)
    assert "could not be reached" in message and "ConnectionError" in message and message.count("\n") == 0
    check_before_work(SimpleNamespace(push_to_hub=False))  # nothing to check


def test_translation_script_with_push_to_hub_offline_writes_nothing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hf_soft_diamond.tasks.run.translation import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="push_to_hub"):
        main(["--dataset_name", "ding", "--do_train", "--output_dir", str(out), "--push_to_hub",
              "--hub_model_id", "someone/x", "--report_to", "none"])
    assert not out.exists()


def test_a_failed_run_removes_what_it_added_and_keeps_complete_checkpoints(tmp_path):
    from hf_soft_diamond.tasks.run.common import run_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # existed before: never touched
    args = SimpleNamespace(output_dir=str(out), process_index=0)
    with pytest.raises(RuntimeError, match="boom"):
        with run_output_dir(args):
            (out / "tokenizer").mkdir()
            (out / "tokenizer" / "tokenizer.json").write_text("{}")
            (out / "checkpoint-10").mkdir()
            (out / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
            (out / "checkpoint-20").mkdir()  # being written when the run died: no trainer_state.json
            (out / "all_results.json.tmp").write_text("{")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-10", "notes.txt"]

    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        with run_output_dir(SimpleNamespace(output_dir=str(fresh), process_index=0)):
            fresh.mkdir()
            (fresh / "README.md").write_text("half")
            raise KeyboardInterrupt
    assert not fresh.exists()  # created by the run, nothing worth keeping: removed
