#!/usr/bin/env bash
# Set up hf_soft_diamond on a fresh Debian/Ubuntu machine (the README's install step).
#
# 1. the real offline corpora from Debian packages (needs root or sudo):
#      trans-de-en            Ding German-English dictionary (example sentences)
#      dataset-fashion-mnist  Fashion-MNIST images
#    Without root: skip this step and train on the Hub datasets instead
#    (--dataset_name iwslt2017 --dataset_config_name iwslt2017-de-en, or cifar10),
#    or on your own files (--train_file / --train_dir).
# 2. PyTorch 2.13 (CPU build where pip finds it locally; any torch >= 2.4 works),
# 3. this package in editable mode with the test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PACKAGES="trans-de-en dataset-fashion-mnist"

if [ "${SKIP_APT:-0}" != "1" ]; then
  if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = "none" ]; then
    echo "setup: not root and no sudo: skipping 'apt-get install $APT_PACKAGES' (see README: data without root)" >&2
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES
  fi
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"

# LibreOffice help (German + English) for the second offline corpus: `apt-get download`
# needs no root; the .debs are unpacked into the user cache, not installed.
if [ "${SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  "$PY" -c "from hf_soft_diamond.tasks.data.translation import download_libreoffice_help as d; print('setup: LibreOffice help in', d())" \
    || echo "setup: could not fetch the LibreOffice help packages; the 'libreoffice' corpus will be unavailable" >&2
fi
"$PY" -c "import hf_soft_diamond, torch; print('setup: hf_soft_diamond', hf_soft_diamond.__version__, 'torch', torch.__version__)"
