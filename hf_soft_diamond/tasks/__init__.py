"""The applications built on the library: German-English translation and image classification.

Everything here is task code, kept apart from the library (the priors, regularizers,
optimizer wiring, Trainer, sparsity and export format one level up), which never imports it:

* ``data/``: the offline corpora built from Debian packages, Hub and file loaders, image decoding
  and batched augmentation;
* ``models.py``: config-built Marian, ResNet and ViT models, and loaders of pretrained ones;
* ``metrics.py``: BLEU/chrF with sacrebleu (13a), top-1 accuracy;
* ``run/``: the training jobs behind ``scripts/`` (one shared start and end in ``run/common.py``),
  the arm comparison and checkpoint averaging;
* ``plots.py``: weight histograms with the fitted prior, prune curves, layer sparsity, spectra;
* ``export.py``: prune a finished run, verify it and write the sparse export folder;
* ``cli.py``: the ``hf-soft-diamond`` command.
"""
