"""Batch-of-one inference written the way a hurried user writes it: torchdoctor's inference
fix benchmark.

A trained-looking CNN classifier (BatchNorm, Dropout) left in training mode (no `eval()`),
autograd recording every forward (no `no_grad` / `inference_mode`), float32, one sample at a
time in a Python loop, `.item()` on every prediction. Everything seeded. Writes the logits to
`--out` (for the benchmark's tolerance check), then one JSON line with the throughput and the
timed window (wall-clock, for energy).

    python benchmarks/infer_naive.py --samples 512 --out logits.pt     # GPU
    python benchmarks/infer_naive.py --tiny --samples 8               # CPU, seconds
"""

import argparse
import json
import time

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        layers = []
        inputs = 3
        for index in range(4):
            out = width * 2**index
            layers += [
                nn.Conv2d(inputs, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            inputs = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(inputs, classes)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(x))


def build(tiny):
    """(model, image size), with BatchNorm statistics that look trained."""
    model = Classifier(8 if tiny else 64, 10 if tiny else 1000)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model, 16 if tiny else 64


def predict(model, images, device, warmup):
    """Logits and classes, one image at a time; the timing leaves out `warmup` images."""
    outputs = []
    predictions = []
    started = time.perf_counter()
    window_start = time.time()
    for index in range(len(images)):
        if index == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            window_start = time.time()
        image = images[index].unsqueeze(0).to(device)
        logits = model(image)
        predictions.append(logits.argmax(dim=1).item())
        outputs.append(logits)
    if device == "cuda":
        torch.cuda.synchronize()
    return outputs, predictions, time.perf_counter() - started, [window_start, time.time()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=16, help="samples left out of the timing")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default=None, help="where to save the logits")
    parser.add_argument("--tiny", action="store_true", help="a small net for CPU tests")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, size = build(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    images = torch.randn(args.samples, 3, size, size)
    warmup = min(args.warmup, args.samples - 1)

    outputs, predictions, elapsed, window = predict(model, images, device, warmup)

    if args.out:
        torch.save(torch.cat(outputs).detach().float().cpu(), args.out)
    timed = args.samples - warmup
    print(
        json.dumps(
            {
                "samples_per_s": timed / elapsed,
                "timed_steps": timed,
                "seconds": elapsed,
                "window": window,
                "classes_seen": len(set(predictions)),
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            }
        )
    )


if __name__ == "__main__":
    main()
