"""Train the tiny Marian model with regularizers; the multi-process half of test_trainer.py.

Run it under ``torchrun`` (gloo on CPU) or as a plain script::

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29533 \
        tests/_ddp_train.py --output_dir OUT --per_device_batch 4

For every configuration in :data:`CONFIGS` (every registered regularizer in each of its modes)
each process writes ``OUT/<config>_rank<r>.pt``
(its final weights) and ``OUT/<config>_rank<r>.json`` (world size, optimizer steps the
regularizer took, the Trainer's ``model_accepts_loss_kwargs``). The data are read in
order (``train_sampling_strategy="sequential"``), so 2 processes x batch 4 see, at every
step, the same 8 examples as 1 process x batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from conftest import TinySeq2SeqData, base_args, tiny_marian  # noqa: E402


def _registry_configs() -> dict[str, dict[str, Any]]:
    """Every registered regularizer in every mode it declares (the contract battery's 2-process part),
    plus pWD at p = 0.7."""
    from hf_soft_diamond.regularizers import available_regularizers, get_regularizer_class

    configs = {f"{name}_{mode}": {"regularizer": name, "reg_strength": 1e-2, "reg_mode": mode}
               for name in available_regularizers() for mode in get_regularizer_class(name).modes}
    configs["pwd_decoupled_p0.7"] = {"regularizer": "pwd", "reg_strength": 1e-2, "reg_mode": "decoupled", "lp_p": 0.7}
    return configs


CONFIGS: dict[str, dict[str, Any]] = _registry_configs()


def train(output_dir: str | Path, per_device_batch: int, steps: int = 3, grad_accum: int = 1, **reg: Any):
    """Train a fresh tiny model (seed 0) on :class:`TinySeq2SeqData`; return the trainer."""
    from hf_soft_diamond.trainer import SoftDiamondSeq2SeqTrainer
    from hf_soft_diamond.training_args import SoftDiamondSeq2SeqTrainingArguments

    args = SoftDiamondSeq2SeqTrainingArguments(**base_args(
        output_dir, per_device_train_batch_size=per_device_batch, gradient_accumulation_steps=grad_accum,
        max_steps=steps, **reg))
    trainer = SoftDiamondSeq2SeqTrainer(model=tiny_marian(seed=0), args=args, train_dataset=TinySeq2SeqData())
    trainer.train()
    return trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--per_device_batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    opts = ap.parse_args(argv)
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in opts.configs:
        trainer = train(out / name, opts.per_device_batch, steps=opts.steps, **CONFIGS[name])
        rank = trainer.args.process_index
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save(state, out / f"{name}_rank{rank}.pt")
        info = {"world_size": trainer.args.world_size, "rank": rank,
                "regularizer_steps": trainer.regularizer_handle.regularizer.step,
                "global_step": trainer.state.global_step,
                "model_accepts_loss_kwargs": trainer.model_accepts_loss_kwargs}
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
