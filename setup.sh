#!/usr/bin/env bash
# Creates .venv with the pinned stack (requirements.txt) and installs this project into it.
# Usage: bash setup.sh          -> runtime install
#        bash setup.sh test     -> runtime + test extra
# Python 3.12 only (jax>=0.11 needs it); .python-version selects pyenv's 3.12 in this folder.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
  echo "setup.sh: need Python 3.12, but '$PY' is $("$PY" --version 2>&1 || echo missing)." >&2
  echo "  With pyenv: 'pyenv install 3.12' (this folder's .python-version selects it), or set PYTHON=/path/to/python3.12." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install -q -r requirements.txt -e ".${extra}"
echo "setup.sh: ready ($(.venv/bin/python --version), jax $(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
