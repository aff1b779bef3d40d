"""A ResNet-style image classifier trained the way a hurried user writes it: torchdoctor's
image-workload fix benchmark.

A Python Dataset that decodes every image on access (zlib-compressed uint8 bytes -> float
tensor, normalised, randomly flipped), `num_workers=0`, float32, NCHW, no cudnn.benchmark,
`running_loss += loss.item()` every step. Synthetic images, everything seeded, so an original
and its fixed version can be compared step by step. Prints each step's loss as a JSON line,
then one JSON line with the throughput and the timed window (wall-clock, for energy).

    python benchmarks/resnet_naive_train.py --steps 40 --batch-size 256    # GPU
    python benchmarks/resnet_naive_train.py --tiny --steps 4               # CPU, seconds
"""

import argparse
import json
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


class CompressedImages(Dataset):
    """Images stored compressed, decoded and augmented per item, as from disk."""

    def __init__(self, count, size, classes, seed):
        rng = np.random.default_rng(seed)
        self.size = size
        self.labels = rng.integers(0, classes, count)
        self.blobs = []
        for label in self.labels:
            base = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
            base[label % 3] //= 2  # a learnable signal per class
            self.blobs.append(zlib.compress(base.tobytes(), 1))
        self.seed = seed

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, index):
        raw = np.frombuffer(zlib.decompress(self.blobs[index]), dtype=np.uint8)
        image = raw.reshape(3, self.size, self.size).astype(np.float32) / 255.0
        image = (image - MEAN) / STD
        if np.random.default_rng(self.seed + index).random() < 0.5:
            image = image[:, :, ::-1].copy()
        return torch.from_numpy(image), int(self.labels[index])


class BasicBlock(nn.Module):
    def __init__(self, inputs, outputs, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths, classes):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers = []
        inputs = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)]
            inputs = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(inputs, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(tiny):
    """(model, image size, classes) for the full benchmark or the CPU smoke size."""
    if tiny:
        return ResNet([8, 16], 10), 16, 10
    return ResNet([64, 128, 256, 512], 100), 64, 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--tiny", action="store_true", help="a small net for CPU tests")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, size, classes = build(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    dataset = CompressedImages(args.batch_size * (args.steps + 1), size, classes, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    warmup = min(args.warmup, args.steps - 1)

    losses = torch.zeros(args.steps, device=device)  # the benchmark's record, no sync
    running_loss = 0.0
    started = time.perf_counter()
    window_start = time.time()
    model.train()
    for step, (images, labels) in enumerate(loader):
        if step == args.steps:
            break
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            window_start = time.time()
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        losses[step] = loss.detach()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    window_end = time.time()

    for step, value in enumerate(losses.tolist()):
        print(json.dumps({"step": step, "loss": value}))
    timed = args.steps - warmup
    print(
        json.dumps(
            {
                "samples_per_s": timed * args.batch_size / elapsed,
                "timed_steps": timed,
                "seconds": elapsed,
                "window": [window_start, window_end],
                "batch_size": args.batch_size,
                "mean_loss": running_loss / args.steps,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            }
        )
    )


if __name__ == "__main__":
    main()
