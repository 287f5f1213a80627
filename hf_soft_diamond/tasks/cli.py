"""The ``hf-soft-diamond`` command.

Subcommands (each has ``--help``)::

    hf-soft-diamond train-translation CONFIG.json | --flag value ...
    hf-soft-diamond train-image       CONFIG.json | --flag value ...
    hf-soft-diamond compare --task translation --base_config C.json --arms ARMS.json --seeds 1 2 3 --output_dir D
    hf-soft-diamond average RUN_DIR --last 5 --output_dir OUT [--dtype float16]   checkpoint averaging
    hf-soft-diamond report docs/studies/STUDY [--claims CLAIMS.json]   tables with CIs, verdicts, frontier figure
    hf-soft-diamond card RUN_DIR [--model_name NAME]       (re)write RUN_DIR/README.md from all_results.json
    hf-soft-diamond table --alpha 0.5 1.0 1.5              prebuild SaS lookup tables into the cache
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _train_translation(argv: list[str]) -> None:
    from .run.translation import main

    main(argv)


def _train_image(argv: list[str]) -> None:
    from .run.image import main

    main(argv)


def _compare(argv: list[str]) -> None:
    from .run.compare import main

    main(argv)


def _report(argv: list[str]) -> None:
    from .run.report import main

    main(argv)


def _average(argv: list[str]) -> None:
    from .run.average import main

    main(argv)


def _card(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="hf-soft-diamond card",
                                 description="Render RUN_DIR/README.md (the model card) from RUN_DIR/all_results.json "
                                             "and the PNG plots in RUN_DIR/plots/.")
    ap.add_argument("run_dir")
    ap.add_argument("--model_name", default=None, help="default: the run directory's name")
    args = ap.parse_args(argv)
    from ..model_card import render_model_card

    run_dir = Path(args.run_dir)
    results_path = run_dir / "all_results.json"
    if not results_path.exists():
        ap.error(f"{results_path} does not exist: run a training job first")
    results = json.loads(results_path.read_text())
    plots = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "plots").glob("*.png"))
    card = render_model_card(results, model_name=args.model_name or run_dir.resolve().name, plots=plots)
    card.save(run_dir / "README.md")
    print(run_dir / "README.md")


def _table(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="hf-soft-diamond table",
                                 description="Build the SaS score/log-density lookup tables for the given alphas "
                                             "into the cache ($HF_SOFT_DIAMOND_CACHE), e.g. before a multi-node "
                                             "launch.")
    ap.add_argument("--alpha", type=float, nargs="+", required=True, help="tail indices in (0, 2]")
    args = ap.parse_args(argv)
    from ..priors.sas import prebuild_sas_tables

    for path in prebuild_sas_tables(args.alpha):
        print(path)


def _export(argv: list[str]) -> None:
    from .export import main

    main(argv)


COMMANDS = {
    "train-translation": (_train_translation, "train a German-English translation model (run_translation style)"),
    "train-image": (_train_image, "train an image classifier (ViT / ResNet)"),
    "compare": (_compare, "run several regularizer settings x seeds and tabulate them"),
    "report": (_report, "a recorded study's tables with confidence intervals, claim verdicts, frontier figure"),
    "average": (_average, "average the weights of a run's last checkpoints"),
    "card": (_card, "render a run's model card"),
    "table": (_table, "prebuild SaS lookup tables"),
    "export": (_export, "prune a run at its knee and write a compressed checkpoint"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [__doc__.strip(), "", "commands:"] + [f"  {n:18s} {h}" for n, (_, h) in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            raise SystemExit(2)
        return
    COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    main()
