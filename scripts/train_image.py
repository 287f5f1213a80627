#!/usr/bin/env python
"""Train an image classifier (ResNet / ViT) with a heavy-tailed weight prior.

    python scripts/train_image.py configs/demo_image.json
    accelerate launch scripts/train_image.py --dataset_name fashion_mnist --model_type resnet --model_size small \
        --regularizer sas --reg_strength 1e-4 --sas_alpha 1.5 --sas_gamma 0.5 --recipe paper \
        --hflip --crop_padding 2 --output_dir runs/fmnist-sas --do_train
    # with the Hub (the soft-diamond paper's datasets):
    python scripts/train_image.py --dataset_name cifar10 --recipe paper --hflip --crop_padding 4 --cutout_size 8 ...
    python scripts/train_image.py --dataset_name caltech256 --model_type vit ...   # decoded at 100x100x3

All flags: ``python scripts/train_image.py --help``. The code lives in
``hf_soft_diamond/tasks/run/image.py`` (also ``hf-soft-diamond train-image``).
"""

from hf_soft_diamond.tasks.run.image import main

if __name__ == "__main__":
    main()
