#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/scripts/env.sh"
python -m pytest "$@"
