"""Detect-stage throughput on this machine (images/s), CPU by default.

For each batch size: the median over repeats of (a) torchvision's own `model(images)` (the
baseline, measured in the same run) and (b) our `detect_batch`, which also keeps every detection's
class-probability vector; printed as images/s and as the ratio (b)/(a).

    python bench/detect_throughput.py                       # fasterrcnn_small_cpu, 320 px, CPU
    python bench/detect_throughput.py --arch fasterrcnn_mobilenet_v3_large_320_fpn --size 320
    python bench/detect_throughput.py --device cuda --arch fasterrcnn_resnet50_fpn --size 800
"""

from __future__ import annotations

import argparse

import torch

from jobs.baseline.models import DetectorSettings, build_detector
from jobs.baseline.predict import LabelMap, detect_batch

from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="fasterrcnn_small_cpu")
    parser.add_argument("--size", type=int, default=320, help="square image side (and the detector's min/max size)")
    parser.add_argument("--classes", type=int, default=7, help="object classes (K)")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    settings = DetectorSettings(args.size, args.size, 0.001, 0.5, 100)
    model = build_detector(args.arch, args.classes + 1, settings).to(device).eval()
    label_map = LabelMap.identity(list(range(1, args.classes + 1)))
    print(f"{args.arch}, {args.size}x{args.size} px, {args.classes} classes, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'torchvision img/s':>18} {'detect_batch img/s':>19} {'ratio':>6}")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        images = [torch.rand(3, args.size, args.size, device=device) for _ in range(bs)]
        with torch.inference_mode():
            model(images)  # warm-up
            base = median_seconds(lambda: model(images), args.repeats, sync)
            ours = median_seconds(lambda: detect_batch(model, images, label_map), args.repeats, sync)
        print(f"{bs:>5} {bs / base:>18.1f} {bs / ours:>19.1f} {base / ours:>6.2f}")


if __name__ == "__main__":
    main()
