"""Training from an image folder: traincraft's decoded cache with augmentation per batch on the
device, against the usual per-sample pipeline; and the cost of building the cache.

    python bench/images.py [--images 3000] [--repeats 3] [--model tiny|small]

The folder: ``--images`` JPEG files of 96x96 RGB noise-on-a-colour, 10 class folders, in a
temporary folder. Both pipelines train the same CNN on 64x64 crops for one epoch, batch 64,
Adam, one thread for the model (``torch.set_num_threads(1)``). ``--model tiny`` (one strided
convolution: the data path is what is timed) or ``small`` (two convolutions of 16 and 32
channels: the model's own step is most of the time, and both pipelines keep up with it):

* ``per-sample``: a ``Dataset`` that opens each file with Pillow, takes a random resized crop
  and a random horizontal flip (Pillow operations, as torchvision's transforms do per sample),
  turns it into a float tensor and normalises it; a ``DataLoader`` with 2 workers collates the
  batches (torchvision is not installed in this environment; its ``ImageFolder`` does the same
  work per sample);
* ``traincraft``: ``dataset: {images: ...}`` read from its cache (built beforehand), the same
  augmentations with kornia per batch, normalisation per batch.

Reported: images per second of the training epoch (median of the repeats, interleaved), and the
cache build's time over one plain Pillow decoding pass of the folder (open, convert, resize).
The table goes to ``bench/results/images-<model>.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

import traincraft as tc  # noqa: E402
from traincraft.images import ImageSpec, read_images  # noqa: E402

SIZE, CROP, BATCH, CLASSES = 96, 64, 64, 10
MODEL = "tiny"
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def write_folder(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % CLASSES
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(label * 25) % 256, (label * 70) % 256, (label * 130) % 256])
        pixels = np.clip(colour + rng.normal(0, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def model() -> nn.Module:
    torch.manual_seed(0)
    if MODEL == "tiny":
        return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, CLASSES))
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES),
    )


class PerSample(Dataset):
    """What a torchvision ImageFolder with RandomResizedCrop, RandomHorizontalFlip, ToTensor and
    Normalize does, with Pillow."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.rglob("*.jpg"))
        self.labels = [int(f.parent.name.removeprefix("class")) for f in self.files]
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
            scale = random.uniform(0.6, 1.0)
            side = int(SIZE * scale**0.5)
            left, top = random.randint(0, SIZE - side), random.randint(0, SIZE - side)
            image = image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
            if random.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, self.labels[i]


def per_sample_epoch(root: Path) -> float:
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(PerSample(root), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=False)
    started = time.perf_counter()
    seen = 0
    for x, y in loader:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


def traincraft_epoch(pixels: torch.Tensor, labels: torch.Tensor, threads: int = 1) -> float:
    torch.set_num_threads(threads)  # the per-sample pipeline's workers take the other cores
    trainer = tc.Trainer(
        model(), loss="cross_entropy", optimizer="adam", lr=1e-3, batch_size=BATCH, max_epochs=1, progress=False,
        seed=0, data={"augment": [{"name": "random_resized_crop", "size": [CROP, CROP], "scale": [0.6, 1.0]},
                                  {"name": "horizontal_flip"}],
                      "normalize": {"mean": MEAN, "std": STD}},
    )
    started = time.perf_counter()
    trainer.fit((pixels, labels))
    seconds = time.perf_counter() - started
    torch.set_num_threads(1)
    return len(labels) / seconds


def plain_decode(root: Path) -> float:
    started = time.perf_counter()
    for file in sorted(root.rglob("*.jpg")):
        with Image.open(file) as image:
            np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return time.perf_counter() - started


def cache_build(root: Path, cache: Path) -> float:
    started = time.perf_counter()
    read_images(ImageSpec(images=str(root), image_size=SIZE, channels=3, resize="stretch", cache=str(cache)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=["tiny", "small"], default="tiny")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        write_folder(root, args.images)
        decode, build = [], []
        for r in range(args.repeats):
            decode.append(plain_decode(root))
            build.append(cache_build(root, Path(tmp) / f"cache{r}"))
        parts = read_images(ImageSpec(images=str(root), image_size=SIZE, channels=3, resize="stretch",
                                      cache=str(Path(tmp) / "cache0")))
        pixels = torch.from_numpy(np.ascontiguousarray(parts["train"][0]))
        labels = torch.tensor([int(name.removeprefix("class")) for name in parts["train"][1]])
        traincraft_epoch(pixels[:BATCH * 2], labels[:BATCH * 2])  # warm-up: kornia's import, first calls
        theirs, ours, ours_both = [], [], []
        for _ in range(args.repeats):
            theirs.append(per_sample_epoch(root))
            ours.append(traincraft_epoch(pixels, labels))
            ours_both.append(traincraft_epoch(pixels, labels, threads=2))
    throughput = statistics.median(ours_both) / statistics.median(theirs)
    cache_ratio = statistics.median(build) / statistics.median(decode)
    lines = [
        "# Training from an image folder",
        "",
        f"`python bench/images.py --images {args.images} --repeats {args.repeats} --model {args.model}`; "
        f"torch {torch.__version__}, one model thread, {args.images} JPEG files {SIZE}x{SIZE} RGB, crops "
        f"{CROP}x{CROP}, batch {BATCH}, the {args.model} model; medians.",
        "",
        "| pipeline | images/s (one epoch) |",
        "|---|---:|",
        f"| per-sample: Pillow per image, DataLoader with 2 workers | {statistics.median(theirs):.0f} |",
        f"| traincraft: uint8 cache, kornia per batch, 1 thread | {statistics.median(ours):.0f} |",
        f"| traincraft: the same, 2 threads (the cores the workers take) | {statistics.median(ours_both):.0f} |",
        "",
        f"Throughput with 2 threads: {throughput:.2f}x the per-sample pipeline (budget >= 3x: "
        f"{'ok' if throughput >= 3 else 'over budget'}).",
        "",
        f"Cache build: {statistics.median(build):.2f} s against {statistics.median(decode):.2f} s for one plain "
        f"Pillow decoding pass: {cache_ratio:.2f}x (budget <= 1.3x: {'ok' if cache_ratio <= 1.3 else 'over budget'}).",
    ]
    out = Path(__file__).parent / "results" / f"images-{args.model}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
