#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, tests. Extra args go to pytest.
source "$(dirname "$0")/env.sh"
ruff check .
# Two pytest workers: the verl runs (tests/integration: one in-process Ray session, real steps in
# subprocesses) stay together on one worker (xdist_group "verl", tests/conftest.py), everything else
# runs beside them on the other, since the verl runs mostly wait on start-up.
python -m pytest -n 2 --dist loadgroup "$@"
