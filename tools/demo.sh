#!/usr/bin/env bash
# The main job on a laptop (CPU): check the plugin is wired into verl, then the KTAE benchmark.
source "$(dirname "$0")/env.sh"
verl-credit doctor
python benchmarks/ktae_speed.py "$@"
