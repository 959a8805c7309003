"""Test-set decoding speed of P1's CNN-RNN: beam search (beam 3) against greedy (beam 1).

Both decode the same batches of random pooled features with the same randomly initialised
:class:`~annotlib.models.cnn_rnn.CNNRNNDecoder`; with ``--backbone`` the batches are random
images and each timing includes the CNN's forward pass (timm, ``num_classes=0``, random
init). Random weights rarely emit END, so both searches run to ``--max-length`` labels: the
slowest case for that length (the default 5 is the most labels of a Corel-5k test image).
After one warm-up batch, every batch is timed ``--repeats`` times in each mode, the modes
alternating; each batch's fastest run counts, since other work on the machine only ever slows
a run down. The goal on CPU, including the CNN: beam 3 costs at most 2x greedy. Example::

    python benchmarks/decode_speed.py --backbone mobilenetv2_100 --image-size 128
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from annotlib.models.cnn_rnn import CNNRNNDecoder

GOAL = 2.0  # beam-3 seconds over greedy seconds, CNN included, on CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--feature-dim", type=int, default=1280,
                        help="pooled feature size without --backbone (MobileNetV2's 1280)")
    parser.add_argument("--classes", type=int, default=260, help="C (Corel-5k: 260)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=5)
    parser.add_argument("--backbone", default=None, help="timm model name, e.g. mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cnn = None
    if args.backbone is not None:
        cnn = timm.create_model(args.backbone, num_classes=0).eval().to(device)
        inputs = torch.randn(args.num_images, 3, args.image_size, args.image_size)
        feature_dim = cnn.num_features
    else:
        inputs = torch.randn(args.num_images, args.feature_dim)
        feature_dim = args.feature_dim
    inputs = inputs.to(device)
    decoder = CNNRNNDecoder(feature_dim, args.classes).eval().to(device)
    batches = inputs.split(args.batch_size)

    def run(beam: int, batch: torch.Tensor) -> tuple[float, int]:
        """Seconds to decode ``batch`` (CNN included), and the labels it predicted."""
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            features = cnn(batch) if cnn is not None else batch
            labels = int(decoder.decode(features, beam, args.max_length).labels.sum())
        sync(device)
        return time.perf_counter() - start, labels

    modes = {"greedy": 1, f"beam {args.beam_size}": args.beam_size}
    for beam in modes.values():
        run(beam, batches[0])
    # Per batch, the modes alternate and each keeps its fastest repeat: a burst of other
    # work on the machine then slows both alike or neither.
    fastest = {name: [float("inf")] * len(batches) for name in modes}
    labels = dict.fromkeys(modes, 0)
    for repeat in range(args.repeats):
        for i, batch in enumerate(batches):
            for name, beam in modes.items():
                seconds, predicted = run(beam, batch)
                fastest[name][i] = min(fastest[name][i], seconds)
                labels[name] += predicted if repeat == 0 else 0

    what = f"{args.backbone} {args.image_size}px + decoder" if cnn is not None else "decoder only"
    print(f"{what}, C={args.classes}, D={feature_dim}, {args.num_images} images, "
          f"batch {args.batch_size}, max_length {args.max_length}, {device}, "
          f"{torch.get_num_threads()} threads, fastest of {args.repeats} per batch")
    seconds = {name: sum(times) for name, times in fastest.items()}
    for name in modes:
        print(f"{name:>8}: {args.num_images / seconds[name]:9.1f} img/s, "
              f"{labels[name] / args.num_images:.2f} labels per image")
    ratio = seconds[f"beam {args.beam_size}"] / seconds["greedy"]
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"beam {args.beam_size} / greedy time: {ratio:.2f}x ({verdict} the {GOAL:.0f}x goal)")


if __name__ == "__main__":
    main()
