#!/usr/bin/env python
"""Run one task with several regularizer settings and seeds; write one comparison table.

    python scripts/compare_regularizers.py --task translation --base_config configs/demo_translation.json \
        --arms configs/arms_translation.json --seeds 1 2 3 --output_dir runs/compare-translation

Writes ``comparison.md`` (mean +- std of BLEU or accuracy, sparsity at each threshold,
sparsity at <= 1 point loss, wall time), ``comparison.json`` and ``prune_curves.png``.
All flags: ``--help``. The code lives in ``hf_soft_diamond/tasks/run/compare.py`` (also
``hf-soft-diamond compare``).
"""

from hf_soft_diamond.tasks.run.compare import main

if __name__ == "__main__":
    main()
