#!/usr/bin/env python
"""Train a German-English translation Transformer with a heavy-tailed weight prior.

    python scripts/train_translation.py configs/demo_translation.json
    accelerate launch scripts/train_translation.py --dataset_name ding --model_size tiny \
        --regularizer sas --reg_strength 1e-4 --sas_alpha 1.5 --sas_gamma 0.5 --output_dir runs/sas --do_train
    # with the Hub:
    python scripts/train_translation.py --dataset_name iwslt2017 --dataset_config_name iwslt2017-de-en \
        --model_size iwslt --regularizer sas ... --push_to_hub --hub_model_id you/marian-iwslt-sas

All flags: ``python scripts/train_translation.py --help``. The code lives in
``hf_soft_diamond/tasks/run/translation.py`` (also ``hf-soft-diamond train-translation``).
"""

from hf_soft_diamond.tasks.run.translation import main

if __name__ == "__main__":
    main()
