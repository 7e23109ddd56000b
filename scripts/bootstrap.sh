#!/usr/bin/env bash
# Create .venv and install the locked dependencies (requirements.lock) plus loom-ray itself (editable).
# Re-running is cheap: nothing happens while the lock and pyproject.toml are unchanged.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bootstrap: Python >= 3.11 needed" >&2; exit 1; }
stamp=.venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
[ -f "$stamp" ] && exit 0
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
.venv/bin/uv pip sync -q --python .venv/bin/python requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
rm -f .venv/.installed-* && touch "$stamp"
echo "bootstrap: .venv ready" >&2
