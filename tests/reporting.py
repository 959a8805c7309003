"""Runs written as run_annotation writes them, with chosen test metrics, for report tests."""

from annotlib.io import write_json
from annotlib.tasks import create_task


def fake_metrics(parent, variant, cfg, test, *, bf16=False, labels=22):
    """``parent/variant/`` with config.json and a metrics.json of ``cfg`` whose test metrics
    are ``test``; returns the folder."""
    run = parent / variant
    write_json(run / "config.json", {**cfg.to_dict(), "fingerprint": cfg.fingerprint()})
    task = create_task(cfg.task, cfg.loss, cfg.loss_kwargs, **cfg.task_kwargs)
    write_json(run / "metrics.json", {
        "schema": 1, "paper": cfg.paper, "variant": variant, "dataset": cfg.dataset, "task": cfg.task,
        "head": cfg.head, "loss": cfg.loss, "config": cfg.to_dict(), "fingerprint": cfg.fingerprint(),
        "val": test, "test": test, "selection": {"split": "val", "metric": "mAP", "mode": "max", "epoch": 1},
        "protocol": task.protocol(), "calibration": {"labels": labels}, "rounds": [], "weights": "best.pt",
        "num_images": {"train": 100, "val": 10, "test": 20}, "train_seconds": 1.0,
        "runtime": {"device": "cpu", "world_size": 1, "bf16_autocast": bf16, "channels_last": True}})
    return run
