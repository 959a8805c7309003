# Sourced by run_all.sh and run_tests.sh: create or reuse the environment, then activate it.
# An active conda env (e.g. from environment.yml) is used as it is; otherwise a venv in
# $ANNOTLIB_VENV (default .venv). The package is (re)installed only when pyproject.toml changed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CONDA_PREFIX:-}" ]; then
  env_dir="$CONDA_PREFIX"
else
  env_dir="${ANNOTLIB_VENV:-$repo/.venv}"
  if [ ! -x "$env_dir/bin/python" ]; then
    echo "creating virtual environment $env_dir" >&2
    python3 -m venv "$env_dir"
  fi
  # shellcheck disable=SC1091
  . "$env_dir/bin/activate"
fi
stamp="$env_dir/.annotlib-installed"
want="$(cat "$repo/pyproject.toml" | sha1sum | cut -d' ' -f1) $repo"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing annotlib and its dependencies into $env_dir; pip lists each download" >&2
  python -m pip install --quiet --upgrade pip
  # Not --quiet: a first install downloads PyTorch and its libraries, gigabytes that would
  # otherwise pass without a word.
  python -m pip install --progress-bar on -e "$repo[dev]"
  echo "$want" > "$stamp"
fi
# Real datasets: $ANNOTLIB_DATA_ROOT, else a data folder beside the repository when there is one.
if [ -z "${ANNOTLIB_DATA_ROOT:-}" ] && [ -d "$repo/../shared/data" ]; then
  export ANNOTLIB_DATA_ROOT="$(cd "$repo/../shared/data" && pwd)"
fi
cd "$repo"
