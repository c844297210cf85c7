#!/usr/bin/env bash
# Install lightning_sylv (editable, with its test extras) into the current Python environment.
#
# An already-installed torch is kept as it is (a CUDA build on a GPU machine stays a CUDA build).
# Without torch, the pinned release is installed first, so that resolving "torch>=2.2" afterwards
# installs nothing more. Set TORCH_INDEX_URL to take that torch from another index, e.g.
# https://download.pytorch.org/whl/cpu for a CPU-only build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: no torch found; installing ${TORCH_SPEC}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install --quiet "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
  else
    "$PY" -m pip install --quiet "${TORCH_SPEC}"
  fi
fi
"$PY" -m pip install --quiet -e ".[test]"
"$PY" -c "import torch, lightning, lightning_sylv; print(f'install.sh: torch {torch.__version__}, lightning {lightning.__version__}, lightning_sylv {lightning_sylv.__version__}')"
