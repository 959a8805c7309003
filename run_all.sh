#!/usr/bin/env bash
# Set up (or reuse) the environment and reproduce the results into reports/<profile>/.
# Options: see ./run_all.sh --help (python -m annotlib.reproduce).
source "$(dirname "$0")/scripts/env.sh"
python -m annotlib.reproduce "$@"
