#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, tests. Extra args go to pytest.
source "$(dirname "$0")/env.sh"
ruff check .
python -m pytest "$@"
