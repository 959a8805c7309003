#!/usr/bin/env bash
# Start JupyterLab in the project's environment (created on first use, as by run_all.sh).
# Jupyter refuses to run as root unless told to; in a container root is the usual user.
source "$(dirname "$0")/env.sh"
if [ "$(id -u)" = 0 ]; then
  set -- --allow-root "$@"
fi
exec jupyter lab "$@"
