"""CIFAR-10 data: the standard ``cifar-10-batches-py`` files when present, otherwise a
synthetic, learnable CIFAR-shaped data set. No torchvision needed.

Augmentation (random crop with 4-pixel padding, horizontal flip) draws from torch's global
generator; ``auto_dataloader`` seeds it per sample from ``(seed, pass, index)``, so the
augmented images are the same after a resume, with any number of workers.
"""

from __future__ import annotations

import os
import pickle

import torch

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
FILES_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
FILE_TEST = "test_batch"


def _read_batches(folder: str, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(torch.as_tensor(entry["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
        labels.append(
            torch.as_tensor(entry.get("labels", entry.get("fine_labels")), dtype=torch.long)
        )
    return torch.cat(images), torch.cat(labels)


def find_cifar(data_dir: str | None) -> str | None:
    """The ``cifar-10-batches-py`` folder under ``data_dir`` (or ``data_dir`` itself), if complete."""
    if not data_dir:
        return None
    for folder in (os.path.join(data_dir, "cifar-10-batches-py"), data_dir):
        if all(os.path.isfile(os.path.join(folder, n)) for n in FILES_TRAIN + [FILE_TEST]):
            return folder
    return None


def synthetic_cifar(
    n: int, seed: int = 0, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 32x32 RGB images whose class is a smooth colour pattern plus noise.

    Each class has a fixed low-frequency template (drawn from ``seed``); an image is its
    class template, shifted by a few pixels, plus strong per-pixel noise. A small CNN
    learns it well above chance within an epoch or two, yet not instantly.
    """
    g = torch.Generator().manual_seed(seed)
    # a shared background plus a faint class-specific pattern: learnable, not trivial
    coarse = (
        0.5
        + 0.12 * torch.randn(1, 3, 4, 4, generator=g)
        + 0.035 * torch.randn(num_classes, 3, 4, 4, generator=g)
    )
    templates = torch.nn.functional.interpolate(
        coarse, size=(40, 40), mode="bicubic", align_corners=False
    )
    labels = torch.randint(0, num_classes, (n,), generator=g)
    shifts = torch.randint(0, 9, (n, 2), generator=g)
    images = torch.empty(n, 3, 32, 32)
    for i in range(n):
        dy, dx = shifts[i].tolist()
        images[i] = templates[labels[i], :, dy : dy + 32, dx : dx + 32]
    images = images + 0.35 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


class CIFARDataset(torch.utils.data.Dataset):
    """uint8 images and labels in memory; normalizes and (if ``train``) augments on read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool):
        self.images, self.labels, self.train = images, labels, train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255)
        if self.train:
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = padded[:, dy : dy + 32, dx : dx + 32]
            if torch.rand(1).item() < 0.5:
                x = x.flip(2)
        return (x - MEAN) / STD, self.labels[i]


def make_datasets(data_dir: str | None, synthetic_size: int, seed: int = 0):
    """Returns ``(train, test, description)``."""
    folder = find_cifar(data_dir)
    if folder is not None:
        xtr, ytr = _read_batches(folder, FILES_TRAIN)
        xte, yte = _read_batches(folder, [FILE_TEST])
        return (
            CIFARDataset(xtr, ytr, True),
            CIFARDataset(xte, yte, False),
            f"CIFAR-10 from {folder}",
        )
    x, y = synthetic_cifar(synthetic_size + synthetic_size // 5, seed=seed)
    n = synthetic_size
    desc = (
        f"SYNTHETIC CIFAR-shaped data ({n} train / {len(y) - n} test images; "
        f"no cifar-10-batches-py found{' in ' + data_dir if data_dir else ''})"
    )
    return CIFARDataset(x[:n], y[:n], True), CIFARDataset(x[n:], y[n:], False), desc
