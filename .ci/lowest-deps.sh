#!/usr/bin/env bash
# Lowest-versions install check: a fresh venv gets the core package plus its `datasets` extra with every direct
# dependency at the floor pyproject.toml declares (uv --resolution lowest-direct), then every module is imported,
# the CLI's --help pages run, and the tests that exercise those dependencies' APIs (anthropic SDK loop, Hub probe
# push, local and Hub dataset inspection) run against the floors. torch/transformers are not installed here: the core needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command -v uv >/dev/null || python3 -m pip install -q 'uv>=0.4'
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
uv venv -q -p python3 "$tmp/venv"
py="$tmp/venv/bin/python"
uv pip install -q -p "$py" --resolution lowest-direct "$repo[datasets]" 'pytest>=8' 'numpy>=2' 'scikit-learn>=1.5'
uv pip list -p "$py" 2>/dev/null | grep -iE '^(anthropic|pydantic|httpx|beautifulsoup4|docker|huggingface-hub|pyyaml|tenacity|rich|pillow|datasets) ' | tr -s ' ' | paste -sd ',' | sed 's/^/floors: /'
(cd "$tmp" && "$py" -W ignore "$repo/.ci/import_all.py")
cd "$tmp" && OMP_NUM_THREADS=1 "$py" -m pytest -q -p no:cacheprovider -W ignore::UserWarning --rootdir "$repo" -c "$repo/pyproject.toml" \
  "$repo/tests/agent/test_loop.py" "$repo/tests/tools/test_hub.py" "$repo/tests/tools/test_dataset.py"
