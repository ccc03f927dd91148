"""Image data sets from files: decoded once, kept as compact uint8 pixels, batched by slicing.

Where the images are (``dataset: {images: ...}`` in a recipe, :func:`read_images` in Python):

* a folder with one subfolder per class (``train/cat/001.png``, ``train/dog/002.png``): one
  split, carved into validation and test by ``data.split`` (stratified, seeded);
* ``{train: folder, val: folder, test: folder}``: the splits as given (``val``/``test`` optional);
* a CSV file of ``path,label`` rows (a header row ``path,label``), paths relative to the CSV.

Each image is decoded once with Pillow into ``channels`` channels (1: grey, 3: RGB) at
``image_size`` (``resize``: ``"crop"`` scales the shorter side then takes the centre,
``"stretch"`` scales each side), and the pixels of a source are cached as one uint8 ``.npy``
array ``(N, C, H, W)``, decoded by one process per core for a large folder. The cache's name is a hash of the files' names, sizes and modification
times and of the decoding settings: an edited folder is decoded again, an unchanged one is not.

A cache that fits in memory (``in_memory: auto``: at most a quarter of the memory available) is
read into it, and batches are slices; a larger one stays on disk (:class:`traincraft.mapped.OnDisk`)
and each batch reads its rows. Conversion to float, augmentation and normalisation happen per
batch on the device (:mod:`traincraft.augment`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traincraft.errors import DataError
from traincraft.files import process_running

#: File suffixes read as images (Pillow decodes them all).
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
RESIZE = ("crop", "stretch")
SPLITS = ("train", "val", "test")
_CACHE_VERSION = 2


@dataclass
class ImageSpec:
    """How to read an image data set (the recipe's ``dataset: {images: ..., ...}``).

    Args:
        images: a class-per-subfolder folder, ``{"train": ..., "val": ..., "test": ...}``, or a
            ``path,label`` CSV file.
        image_size: ``[height, width]`` (or one number for a square).
        channels: 1 (grey) or 3 (RGB).
        resize: ``"crop"`` (the shorter side to size, then the centre) or ``"stretch"``.
        cache: the folder of the decoded caches (default ``$TRAINCRAFT_CACHE``, else
            ``~/.cache/traincraft/images``).
        in_memory: ``"auto"`` (a cache of at most a quarter of the available memory is read
            into memory, a larger one stays on disk), ``True`` or ``False``.
    """

    images: Any
    image_size: Any = 32
    channels: int = 3
    resize: str = "crop"
    cache: str | None = None
    in_memory: Any = "auto"

    def __post_init__(self) -> None:
        size = self.image_size
        sizes = [size, size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else None
        if not sizes or len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise DataError(f"dataset.image_size must be a size or [height, width] of whole numbers > 0, got {size!r}")
        self.image_size = (int(sizes[0]), int(sizes[1]))
        if self.channels not in (1, 3):
            raise DataError(f"dataset.channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.resize not in RESIZE:
            raise DataError(f"dataset.resize must be one of {', '.join(RESIZE)}, got {self.resize!r}")
        if self.in_memory not in ("auto", True, False):
            raise DataError(f"dataset.in_memory must be auto, true or false, got {self.in_memory!r}")


def read_images(spec: ImageSpec, base_dir: str | os.PathLike[str] | None = None, *,
                min_classes: int = 2) -> dict[str, tuple[Any, np.ndarray]]:
    """The splits of an image data set: ``{"train": (pixels uint8 (N, C, H, W), labels (N,) of
    str)}``, and ``"val"``/``"test"`` when the source gives them. The pixels are an array in
    memory, or :class:`~traincraft.mapped.OnDisk` rows of the cache (``spec.in_memory``).

    Raises:
        DataError: a missing folder or file, an empty or lone class, an unreadable image (each
            named), a CSV without ``path`` and ``label`` columns.
    """
    images = spec.images
    if isinstance(images, dict):
        unknown = set(images) - set(SPLITS)
        if unknown or "train" not in images:
            raise DataError(f"dataset.images: give train (and val, test) folders; got keys {sorted(images)}")
        listed = {key: _listing(_path(images[key], base_dir)) for key in SPLITS if key in images}
    else:
        listed = {"train": _listing(_path(images, base_dir))}
    classes = sorted({label for _, labels, _ in listed.values() for label in labels})
    if len(classes) < min_classes:
        where = next(iter(listed.values()))[2]
        raise DataError(f"{where}: a single class ({classes[0] if classes else 'none'}); classification needs at least two")
    shapes = {key: (len(files), spec.channels, *spec.image_size) for key, (files, _, _) in listed.items()}
    in_memory = spec.in_memory
    if in_memory == "auto":
        in_memory = sum(int(np.prod(shape)) for shape in shapes.values()) <= memory_available() // 4
    out: dict[str, tuple[Any, np.ndarray]] = {}
    for key, (files, labels, _) in listed.items():
        pixels = _decoded(files, spec, in_memory=bool(in_memory))
        if not in_memory:
            from traincraft.mapped import OnDisk

            pixels = OnDisk(pixels)
        out[key] = (pixels, np.array(labels, dtype=str))
    return out


def memory_available() -> int:
    """Bytes of memory available to new data (``MemAvailable`` on Linux, else the physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _path(text: Any, base_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(os.fspath(text)).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = Path(base_dir) / path
    if not path.exists():
        raise DataError(f"image folder or CSV {text!r} not found" + (f" (looked in {base_dir})" if base_dir else ""))
    return path


def _listing(path: Path) -> tuple[list[Path], list[str], str]:
    """The image files and their labels, in a fixed order, and where they were listed."""
    if path.is_file():
        return (*_csv_listing(path), str(path))
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder {path}: no class subfolders (expected {path}/<class>/<image>)")
    files: list[Path] = []
    labels: list[str] = []
    for folder in folders:
        found = _image_files(folder)
        if not found:
            raise DataError(f"class folder {folder} holds no image ({', '.join(SUFFIXES[:4])}, ...)")
        files += found
        labels += [folder.name] * len(found)
    return files, labels, str(path)


def _image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (subfolders too), sorted by path. ``os.scandir``'s
    entries know whether they are files without a ``stat`` each."""
    found = []
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):  # as rglob: links to folders are not followed
                    pending.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in SUFFIXES:
                    found.append(Path(entry.path))
    return sorted(found)


def _csv_listing(path: Path) -> tuple[list[Path], list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"image list {path}: needs a header row with the columns path,label")
    files = []
    for i, row in enumerate(rows, start=2):
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise DataError(f"image list {path}, line {i}: {row['path']!r} not found")
        files.append(file)
    return files, [row["label"] for row in rows]


def cache_folder(spec: ImageSpec) -> Path:
    if spec.cache:
        return Path(spec.cache).expanduser()
    if os.environ.get("TRAINCRAFT_CACHE"):
        return Path(os.environ["TRAINCRAFT_CACHE"]) / "images"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "traincraft" / "images"


def cache_key(files: list[Path], spec: ImageSpec) -> str:
    """A hash of the files' names, sizes and modification times and of the decoding settings."""
    digest = hashlib.sha256(json.dumps(
        [_CACHE_VERSION, list(spec.image_size), spec.channels, spec.resize]).encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{os.path.abspath(file)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decoded(files: list[Path], spec: ImageSpec, *, in_memory: bool = True) -> np.ndarray:
    """The pixels of ``files``, from the cache when it is current, else decoded into it: read
    into memory, or (``in_memory=False``) the cache's read-only memory map."""
    folder = cache_folder(spec)
    path = folder / f"{cache_key(files, spec)}.npy"
    shape = (len(files), spec.channels, *spec.image_size)
    if path.is_file():
        try:
            return _read_cache(path, shape, in_memory)
        except (OSError, ValueError):
            pass  # a damaged cache is decoded again
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(folder, path.stem)
    partial = folder / f".{path.stem}.{os.getpid()}.tmp.npy"
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()  # header and size
    try:
        _decode_into(partial, files, spec)
        os.replace(partial, path)  # a reader sees the whole cache or none
    finally:
        partial.unlink(missing_ok=True)
    return _read_cache(path, shape, in_memory)


def _read_cache(path: Path, shape: tuple[int, ...], in_memory: bool) -> np.ndarray:
    pixels = np.load(path, mmap_mode="r")
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise ValueError(f"{path}: a cache of another shape")
    return np.load(path) if in_memory else pixels  # np.load reads the file: no page faults per page


#: Folders of fewer images are decoded in this process (starting workers costs more).
_WORKERS_FROM = 256


def _decode_into(partial: Path, files: list[Path], spec: ImageSpec) -> None:
    """Decode ``files`` into the rows of the ``.npy`` file ``partial``: in worker processes,
    one per core, for a large folder. The first file (in order) that cannot be read is the
    error raised, and the files not yet begun are not decoded."""
    import multiprocessing

    workers = decoding_workers()
    if workers == 1 or len(files) < _WORKERS_FROM or "fork" not in multiprocessing.get_all_start_methods():
        _decode_rows(partial, 0, files, spec)
        return
    from concurrent.futures import ProcessPoolExecutor

    from PIL import Image  # noqa: F401  (imported before the fork: the workers have it)

    chunk = -(-len(files) // (workers * 4))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    try:
        jobs = [pool.submit(_decode_rows, partial, start, files[start:start + chunk], spec)
                for start in range(0, len(files), chunk)]
        for job in jobs:
            job.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_rows(partial: Path, start: int, files: list[Path], spec: ImageSpec) -> None:
    out = np.load(partial, mmap_mode="r+")
    for i, file in enumerate(files):
        out[start + i] = decode(file, spec)
    out.flush()


def decoding_workers() -> int:
    """One decoding process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _remove_dead_partials(folder: Path, stem: str) -> None:
    """Partial caches that a killed process left (its pid no longer runs) are removed."""
    for leftover in folder.glob(f".{stem}.*.tmp.npy"):
        pid = leftover.name.split(".")[2]
        if pid.isdigit() and not process_running(int(pid)):
            leftover.unlink(missing_ok=True)


def decode(file: Path, spec: ImageSpec) -> np.ndarray:
    """One image as uint8 ``(C, H, W)`` at the spec's size and channels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image = image.convert("L" if spec.channels == 1 else "RGB")
            image = _resized(image, spec.image_size, spec.resize)
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"image {file} cannot be read: {type(err).__name__}: {err}") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _resized(image: Any, size: tuple[int, int], policy: str) -> Any:
    from PIL import Image

    height, width = size
    if policy == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(width / image.width, height / image.height)  # the shorter side fits, then the centre
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.BILINEAR)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def channel_stats(pixels: np.ndarray, chunk: int = 4096) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of uint8 pixels in ``[0, 1]`` units, read in
    chunks (a memory-mapped array is never read whole)."""
    channels = pixels.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(pixels), chunk):
        part = np.asarray(pixels[start:start + chunk], dtype=np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return {"mean": [float(m) for m in mean], "std": [float(s) if s > 0 else 1.0 for s in std]}
