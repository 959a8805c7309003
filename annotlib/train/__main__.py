"""Train and evaluate one run from a config, on one process or data-parallel under torchrun.

    python -m annotlib.train --out runs/corel --config config.json --set epochs=10
    torchrun --nproc_per_node=4 -m annotlib.train --out runs/corel --set dataset=corel-5k backbone=tresnet_m

Without ``--config`` the run starts from :class:`TrainConfig`'s defaults; ``--set`` overrides
fields. Resumes a killed run; prints the test metrics.
"""

from __future__ import annotations

import argparse
import json

from .config import config_from
from .distributed import setup
from .loop import resolve_device
from .run import run_annotation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m annotlib.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the run folder (config.json, checkpoints, metrics.json)")
    parser.add_argument("--config", help="a config.json to start from (e.g. an earlier run's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override config fields")
    args = parser.parse_args(argv)
    try:
        cfg = config_from(args.config, args.set)
    except ValueError as err:
        parser.error(f"--set {err}")
    metrics = run_annotation(cfg, args.out)
    if setup(resolve_device(cfg.device)).is_main:
        print(json.dumps(metrics["test"], indent=2))


if __name__ == "__main__":
    main()
