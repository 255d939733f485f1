#!/usr/bin/env bash
# The main job on a laptop (CPU, offline): check that verl loads the plugin, then `verl-credit explain` on
# its defaults: SmolLM2-135M-Instruct samples 4 solutions to each of 3 GSM8K problems, math-verify grades
# them, every estimator computes its credit, and outputs/explain/report.html shows it token by token
# (about 2-3 minutes on 2 cores). Extra arguments go to `verl-credit explain`, e.g. --group-size 6.
source "$(dirname "$0")/env.sh"
verl-credit doctor
verl-credit explain "$@"
