"""Synthetic stand-ins for torchvision datasets the sandbox cannot download.

The sandbox has no network, yet many scripts start with
`datasets.MNIST(root, download=True)`. A meta-path hook stands in for them:
- torchvision absent: `torchvision`, `torchvision.datasets` and `torchvision.transforms`
  resolve to a small shim whose datasets yield random images of the real shapes and dtypes
  and whose transforms cover the common pipeline (ToTensor, Normalize, crops, flips, ...);
- torchvision present: each known dataset class is wrapped so that, when its files are
  absent (download is disabled here), the synthetic stand-in of the same shape takes over.
Every stand-in created is recorded in `USED`, so the evidence says the data was synthetic.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import random
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

# name -> (channels, height, width, classes, train length, test length)
SPECS: dict[str, tuple[int, int, int, int, int, int]] = {
    "MNIST": (1, 28, 28, 10, 60000, 10000),
    "FashionMNIST": (1, 28, 28, 10, 60000, 10000),
    "KMNIST": (1, 28, 28, 10, 60000, 10000),
    "QMNIST": (1, 28, 28, 10, 60000, 60000),
    "EMNIST": (1, 28, 28, 47, 112800, 18800),
    "CIFAR10": (3, 32, 32, 10, 50000, 10000),
    "CIFAR100": (3, 32, 32, 100, 50000, 10000),
    "SVHN": (3, 32, 32, 10, 73257, 26032),
    "STL10": (3, 96, 96, 10, 5000, 8000),
    "ImageNet": (3, 224, 224, 1000, 1281167, 50000),
}
USED: list[dict[str, Any]] = []
_SHIM_MODULES = (
    "torchvision",
    "torchvision.datasets",
    "torchvision.transforms",
    "torchvision.transforms.v2",
)


class SyntheticImage:
    """What a PIL image is to torchvision, when PIL is absent: uint8 pixels, CHW."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[-1]), int(self.pixels.shape[-2])


def _to_pil(pixels: torch.Tensor) -> Any:
    try:
        image_module: Any = importlib.import_module("PIL.Image")
    except ImportError:
        return SyntheticImage(pixels)
    channels, height, width = pixels.shape
    data = pixels.permute(1, 2, 0).contiguous().flatten().tolist()
    image = image_module.frombytes("L" if channels == 1 else "RGB", (width, height), bytes(data))
    return image


class SyntheticVisionDataset(torch.utils.data.Dataset[tuple[Any, int]]):
    """Random images with the real dataset's shape, class count and length."""

    def __init__(
        self,
        name: str,
        reason: str,
        root: Any = None,
        train: Any = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        channels, height, width, classes, n_train, n_test = SPECS[name]
        split = kwargs.get("split", train if isinstance(train, str) else None)
        is_train = split in (None, "train", "balanced") and train is not False
        self.shape = (channels, height, width)
        self.classes = [str(c) for c in range(classes)]
        self.length = n_train if is_train else n_test
        self.transform, self.target_transform = transform, target_transform
        self.seed = 0 if is_train else 1_000_003
        USED.append(
            {
                "dataset": name,
                "root": str(root),
                "train": is_train,
                "shape": list(self.shape),
                "dtype": "uint8",
                "classes": classes,
                "length": self.length,
                "reason": reason,
            }
        )

    def __len__(self) -> int:
        return self.length

    @property
    def targets(self) -> list[int]:
        return [self._target(i) for i in range(self.length)]

    def _target(self, index: int) -> int:
        return (index * 7919 + self.seed) % len(self.classes)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        generator = torch.Generator().manual_seed(index + self.seed)
        pixels = torch.randint(0, 256, self.shape, dtype=torch.uint8, generator=generator)
        image = _to_pil(pixels)
        target: Any = self._target(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


# --- the transforms shim (used only when torchvision itself is absent) -----------------


def _pixels(image: Any) -> torch.Tensor:
    if isinstance(image, SyntheticImage):
        return image.pixels
    if isinstance(image, torch.Tensor):
        return image
    channels = 1 if image.mode == "L" else 3
    data = torch.tensor(list(image.tobytes()), dtype=torch.uint8)
    return data.reshape(image.size[1], image.size[0], channels).permute(2, 0, 1)


def _like(image: Any, pixels: torch.Tensor) -> Any:
    return pixels if isinstance(image, torch.Tensor) else SyntheticImage(pixels)


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image


class ToTensor:
    def __call__(self, image: Any) -> torch.Tensor:
        pixels = _pixels(image)
        return pixels.float().div(255) if pixels.dtype == torch.uint8 else pixels.float()


class PILToTensor:
    def __call__(self, image: Any) -> torch.Tensor:
        return _pixels(image).clone()


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean = torch.tensor(list(mean)).reshape(-1, 1, 1)
        self.std = torch.tensor(list(std)).reshape(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class Lambda:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, image: Any) -> Any:
        return self.fn(image)


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Resize:
    def __init__(self, size: int | Sequence[int], *args: Any, **kwargs: Any) -> None:
        self.size = _size(size)

    def __call__(self, image: Any) -> Any:
        pixels = _pixels(image)
        resized = F.interpolate(pixels[None].float(), size=self.size, mode="bilinear")[0]
        return _like(
            image,
            resized.round().clamp(0, 255).to(pixels.dtype)
            if pixels.dtype == torch.uint8
            else resized,
        )


class CenterCrop:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size(size)

    def __call__(self, image: Any) -> Any:
        pixels = _pixels(image)
        top = max((pixels.shape[-2] - self.size[0]) // 2, 0)
        left = max((pixels.shape[-1] - self.size[1]) // 2, 0)
        return _like(image, pixels[..., top : top + self.size[0], left : left + self.size[1]])


class RandomCrop:
    def __init__(self, size: int | Sequence[int], padding: int = 0, **kwargs: Any) -> None:
        self.size, self.padding = _size(size), padding

    def __call__(self, image: Any) -> Any:
        pixels = _pixels(image)
        if self.padding:
            pixels = F.pad(pixels, [self.padding] * 4)
        top = random.randint(0, max(pixels.shape[-2] - self.size[0], 0))
        left = random.randint(0, max(pixels.shape[-1] - self.size[1], 0))
        return _like(image, pixels[..., top : top + self.size[0], left : left + self.size[1]])


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Any) -> Any:
        return _like(image, _pixels(image).flip(-1)) if random.random() < self.p else image


_TRANSFORMS = (
    Compose,
    ToTensor,
    PILToTensor,
    Normalize,
    Lambda,
    Resize,
    CenterCrop,
    RandomCrop,
    RandomHorizontalFlip,
)


def _standin_class(name: str, reason: str) -> Callable[..., SyntheticVisionDataset]:
    def create(*args: Any, **kwargs: Any) -> SyntheticVisionDataset:
        return SyntheticVisionDataset(name, reason, *args, **kwargs)

    create.__name__ = create.__qualname__ = name
    return create


def _with_fallback(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """The real dataset when its files are there; the stand-in when it would download."""

    def create(*args: Any, **kwargs: Any) -> Any:
        if "download" in kwargs:
            kwargs = {**kwargs, "download": False}
        try:
            return real(*args, **kwargs)
        except (RuntimeError, OSError) as exc:
            reason = f"dataset files absent and download disabled ({type(exc).__name__})"
            kwargs.pop("download", None)
            return SyntheticVisionDataset(name, reason, *args, **kwargs)

    create.__name__ = create.__qualname__ = name
    return create


def _shim_attribute(module: str, attribute: str) -> Any:
    raise AttributeError(
        f"{module}.{attribute}: torchvision is not installed; the probes harness only "
        "stands in for torchvision.datasets and torchvision.transforms"
    )


class _ShimLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__dict__["__getattr__"] = lambda attribute: _shim_attribute(name, attribute)
        if name == "torchvision":
            module.__path__ = []
            module.__dict__["__version__"] = "0.0.0+torchdoctor-standin"
        elif name == "torchvision.datasets":
            reason = "torchvision not installed"
            for dataset in SPECS:
                setattr(module, dataset, _standin_class(dataset, reason))
        elif name in ("torchvision.transforms", "torchvision.transforms.v2"):
            if name == "torchvision.transforms":
                module.__path__ = []
            for transform in _TRANSFORMS:
                setattr(module, transform.__name__, transform)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.real.exec_module(module)
        for dataset in SPECS:
            real = getattr(module, dataset, None)
            if real is not None:
                setattr(module, dataset, _with_fallback(dataset, real))


class StandInFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.real_torchvision = importlib.machinery.PathFinder.find_spec("torchvision") is not None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _SHIM_MODULES:
            return None
        if not self.real_torchvision:
            return importlib.util.spec_from_loader(
                fullname, _ShimLoader(), is_package=fullname != "torchvision.transforms.v2"
            )
        if fullname != "torchvision.datasets":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install() -> StandInFinder:
    finder = StandInFinder()
    sys.meta_path.insert(0, finder)
    return finder
