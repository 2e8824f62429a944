#!/usr/bin/env bash
# Debian tools that tests use: pdftoppm (poppler-utils) renders report.pdf pages to PNG in tests/tools/test_report.py;
# zsh checks and runs the generated zsh completion script in tests/agent/test_completion.py.
set -euo pipefail
missing=()
command -v pdftoppm >/dev/null || missing+=(poppler-utils)
command -v zsh >/dev/null || missing+=(zsh)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
pdftoppm -v 2>&1 | sed -n 1p  # sed reads all: head would end the pipe early (SIGPIPE under pipefail)
zsh --version
