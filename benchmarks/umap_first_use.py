"""Time the first use of UMAP and of t-SNE in fresh Python processes.

umap-learn (through numba) compiles its functions the first time they run in every new
process; this measures that cost and whether numba's on-disk cache removes it. Each row is
a new ``python`` process that imports the library and projects ``--n`` x ``--dim`` random
features to 2-D, run twice in a row per setting:

- UMAP with ``NUMBA_CACHE_DIR`` unset: numba caches ``cache=True`` functions in the
  installed package's ``__pycache__`` (when writable; else in ``~/.cache/numba``);
- UMAP with ``NUMBA_CACHE_DIR`` set to a new empty folder: its first run is a cold cache,
  its second shows what a persistent cache folder gives;
- ``annotlib.viz.project_2d(method="umap")``, which also caches umap's own jitted functions,
  with another new empty ``NUMBA_CACHE_DIR``;
- scikit-learn's TSNE, which uses no numba.

"import s" is ``import umap`` (or ``sklearn.manifold``), "fit s" the projection, "process s"
the whole process, Python's start (and, for ``project_2d``, importing ``annotlib.viz``) too::

    python benchmarks/umap_first_use.py [--n 500] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
method, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
if method == "tsne":
    from sklearn.manifold import TSNE
    imported = fit_start = time.perf_counter()
    TSNE(random_state=0).fit_transform(x)
elif method == "umap":
    import umap
    imported = fit_start = time.perf_counter()
    umap.UMAP(random_state=0, n_jobs=1).fit_transform(x)
else:
    import umap
    imported = time.perf_counter()
    from annotlib.viz import project_2d
    fit_start = time.perf_counter()
    project_2d(x, "umap")
done = time.perf_counter()
print(json.dumps({"import": imported - start, "fit": done - fit_start}))
"""


def run_child(method: str, n: int, dim: int, numba_cache_dir: str | None) -> dict[str, float]:
    """Seconds to import and to fit in a new process, and the process's whole wall time."""
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    if numba_cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache_dir
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(n), str(dim)], env=env,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()

    print(f"{args.n} x {args.dim} random features, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'method':<11}{'NUMBA_CACHE_DIR':<18}{'run':>4}{'import s':>10}{'fit s':>8}"
          f"{'process s':>11}")
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as scratch:
        settings = [("umap", None, "unset"),
                    ("umap", os.path.join(scratch, "umap"), "new empty folder"),
                    ("project_2d", os.path.join(scratch, "project_2d"), "new empty folder"),
                    ("tsne", None, "-")]
        for method, cache_dir, described in settings:
            for run in (1, 2):
                t = run_child(method, args.n, args.dim, cache_dir)
                print(f"{method:<11}{described:<18}{run:>4}{t['import']:>10.1f}{t['fit']:>8.1f}"
                      f"{t['process']:>11.1f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
