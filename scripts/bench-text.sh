#!/usr/bin/env bash
# `rote bench text` on the real-text corpus (scripts/install-text-corpus.sh) against
# rbloom and a Python set (rbloom installed into .tools/py): imports the corpus into
# target/text-corpus once, then runs the benchmark (extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(scripts/install-text-corpus.sh)
if [[ -z "$src" ]]; then
  echo "error: no real-text corpus (see scripts/install-text-corpus.sh)" >&2
  exit 1
fi
if ! PYTHONPATH=.tools/py python3 -c "import rbloom" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/py rbloom
fi
cargo build --release --quiet
if [[ ! -f target/text-corpus/corpus.json ]]; then
  target/release/rote text import "$src" --out target/text-corpus
fi
PYTHONPATH=.tools/py exec target/release/rote bench text target/text-corpus "$@"
