#!/usr/bin/env bash
# Debian tools that tests use: pdftoppm (poppler-utils) renders report.pdf pages to PNG in tests/tools/test_report.py.
set -euo pipefail
if ! command -v pdftoppm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends poppler-utils >/dev/null
fi
pdftoppm -v 2>&1 | sed -n 1p  # sed reads all: head would end the pipe early (SIGPIPE under pipefail)
