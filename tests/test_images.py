"""Image data sets from files: class folders, split folders and path,label lists, decoded once
into a uint8 cache keyed by the files, and every bad folder or file named in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import traincraft as tc
from traincraft import images
from traincraft.datasets import prepare
from traincraft.errors import DataError

CLASSES = {"cat": 40, "dog": 120, "fox": 200}


def write_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, level in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def spec(root: Path, tmp_path: Path, **kwargs) -> dict:
    return {"images": str(root), "image_size": [8, 8], "channels": 3, "cache": str(tmp_path / "cache"), **kwargs}


def test_a_class_folder_becomes_uint8_pixels_decoded_as_pillow_does(tmp_path):
    root = write_folder(tmp_path / "train")
    data = prepare(spec(root, tmp_path, resize="stretch"), split={"val": 0.0, "test": 0.0})
    x, y = data.train
    assert x.dtype == torch.uint8 and tuple(x.shape) == (18, 3, 8, 8)
    assert data.class_names == ["cat", "dog", "fox"] and y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    with Image.open(root / "dog" / "03.png") as image:
        expected = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(x[9].numpy(), expected)
    # The train split's per-channel statistics, in [0, 1] units, exactly as numpy computes them.
    whole = x.numpy().astype(np.float64) / 255
    assert data.normalize["mean"] == pytest.approx(whole.mean(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert data.normalize["std"] == pytest.approx(whole.std(axis=(0, 2, 3)).tolist(), abs=1e-9)


def test_grey_and_centre_crop(tmp_path):
    root = write_folder(tmp_path / "train", size=(12, 20))
    x, _ = prepare(spec(root, tmp_path, channels=1, image_size=6), split={"val": 0, "test": 0}).train
    with Image.open(root / "cat" / "00.png") as image:
        grey = image.convert("L").resize((10, 6), Image.Resampling.BILINEAR)  # the shorter side to 6
        expected = np.asarray(grey.crop((2, 0, 8, 6)))
    assert tuple(x.shape) == (18, 1, 6, 6) and np.array_equal(x[0, 0].numpy(), expected)


def test_the_cache_is_reused_unchanged_and_decoded_again_when_a_file_changes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "train")
    prepare(spec(root, tmp_path), split={"val": 0, "test": 0})
    decoded = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda f, s: decoded.append(f) or real(f, s))
    prepare(spec(root, tmp_path), split={"val": 0, "test": 0})
    assert decoded == []  # unchanged: read from the cache
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "cat" / "00.png")
    stat = (root / "cat" / "00.png").stat()
    os.utime(root / "cat" / "00.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    x, _ = prepare(spec(root, tmp_path), split={"val": 0, "test": 0}).train
    assert len(decoded) == 18 and int(x[0].max()) == 0  # the edit is seen
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # no partial cache left behind


def test_split_folders_and_a_stratified_split(tmp_path):
    train, val = write_folder(tmp_path / "train", per_class=10), write_folder(tmp_path / "val", per_class=2, seed=1)
    given = {**spec(train, tmp_path), "images": {"train": str(train), "val": str(val)}}
    data = prepare(given, split={"val": 0.3, "test": 0.2})
    assert len(data.val[1]) == 6 and data.val[1].tolist() == [0, 0, 1, 1, 2, 2]  # as given
    # test: 20% of the whole 36, carved from train, stratified: 7 -> 2/2/3 or so, each class present
    test_labels = data.test[1].tolist()
    assert len(test_labels) == 7 and set(test_labels) == {0, 1, 2}
    assert len(data.train[1]) == 30 - 7


def test_a_path_label_list(tmp_path):
    root = write_folder(tmp_path / "imgs")
    rows = ["path,label"] + [f"imgs/{c}/{i:02d}.png,{c.upper()}" for c in CLASSES for i in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    data = prepare({**spec(root, tmp_path), "images": str(tmp_path / "list.csv")}, split={"val": 0, "test": 0})
    assert data.class_names == ["CAT", "DOG", "FOX"] and len(data.train[1]) == 18


@pytest.mark.parametrize("damage, message", [
    ("bad image", "image {root}/dog/02.png cannot be read: UnidentifiedImageError"),
    ("empty class", "class folder {root}/emu holds no image (.png, .jpg, .jpeg, .bmp, ...)"),
    ("one class", "{root}: a single class (cat); classification needs at least two"),
    ("no class folders", "image folder {root}: no class subfolders (expected {root}/<class>/<image>)"),
    ("missing", "image folder or CSV '{root}/nowhere' not found"),
])
def test_bad_folders_and_files_are_named_in_one_line(tmp_path, damage, message):
    root = tmp_path / "train"
    if damage == "one class":
        write_folder(root)
        for name in ("dog", "fox"):
            for f in (root / name).iterdir():
                f.unlink()
            (root / name).rmdir()
    elif damage == "no class folders":
        root.mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "lone.png")
    elif damage != "missing":
        write_folder(root)
        if damage == "bad image":
            (root / "dog" / "02.png").write_bytes(b"not an image at all")
        else:
            (root / "emu").mkdir()
    given = str(root / "nowhere") if damage == "missing" else str(root)
    with pytest.raises(DataError) as caught:
        prepare({**spec(root, tmp_path), "images": given}, split={"val": 0, "test": 0})
    assert str(caught.value).startswith(message.format(root=root))


def test_a_recipe_trains_on_an_image_folder_and_evaluates_from_its_run_folder(tmp_path):
    root = write_folder(tmp_path / "train", per_class=12)
    recipe = {
        "name": "imgs", "seed": 0,
        "data": {"dataset": spec(root, tmp_path), "split": {"val": 0.25, "test": 0.25}, "batch_size": 8,
                 "augment": [{"name": "horizontal_flip"}]},
        "model": "cnn", "train": {"max_epochs": 2}, "metrics": ["accuracy"],
    }
    trainer = tc.Trainer.from_recipe(recipe, run_dir=tmp_path / "run", progress=False)
    trainer.fit()
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["normalize"]["mean"] == pytest.approx(trainer.data.normalize["mean"])
    from traincraft.cli import main

    assert main(["evaluate", str(tmp_path / "run")]) == 0  # normalised as in training, from data.json
    evaluated = trainer.evaluate(trainer.data.test)
    assert evaluated["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


def test_the_augmentation_preview_draws_no_number_of_the_run(tmp_path):
    root = write_folder(tmp_path / "train", per_class=8)
    recipe = {
        "name": "imgs", "seed": 0,
        "data": {"dataset": spec(root, tmp_path), "split": {"val": 0.25, "test": 0.0}, "batch_size": 8,
                 "augment": [{"name": "random_resized_crop", "size": [8, 8], "scale": [0.5, 1.0]}]},
        "model": "cnn", "train": {"max_epochs": 2},
    }
    with_folder = tc.Trainer.from_recipe(recipe, run_dir=tmp_path / "run", progress=False)
    with_folder.fit()
    assert (tmp_path / "run" / "plots" / "augment.png").is_file()
    without = tc.Trainer.from_recipe(recipe, progress=False)
    without.fit()
    for a, b in zip(with_folder.model.state_dict().values(), without.model.state_dict().values()):
        assert torch.equal(a, b)


def test_predict_a_folder_and_evaluate_a_new_labelled_folder_from_the_run_folder(tmp_path, capsys):
    import csv
    import json

    from traincraft.cli import main

    root = write_folder(tmp_path / "train", per_class=12)
    recipe = {
        "name": "imgs", "seed": 0,
        "data": {"dataset": spec(root, tmp_path), "split": {"val": 0.25, "test": 0.0}, "batch_size": 8},
        "model": "cnn", "train": {"max_epochs": 2},
    }
    trainer = tc.Trainer.from_recipe(recipe, run_dir=tmp_path / "run", progress=False)
    trainer.fit()
    new = write_folder(tmp_path / "new", per_class=3, seed=7)
    for extra in ("dog", "fox"):  # one class is a fine test set
        for f in (new / extra).iterdir():
            f.unlink()
        (new / extra).rmdir()
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(new), "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["path"] for r in rows] == [str(new / "cat" / f"{i:02d}.png") for i in range(3)]
    pixels = torch.from_numpy(np.stack([images.decode(new / "cat" / f"{i:02d}.png",
                                                      images.ImageSpec(**spec(root, tmp_path))) for i in range(3)]))
    probs = trainer.predict(pixels).softmax(1)  # normalised by the trainer as in training
    assert [float(r["prob_dog"]) for r in rows] == pytest.approx(probs[:, 1].tolist(), rel=1e-5)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(new)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["loss"] == pytest.approx(trainer.evaluate((pixels, torch.zeros(3, dtype=torch.long)))["loss"], rel=1e-6)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "train" / "..")]) == 2


def test_a_partial_cache_of_a_killed_decoder_is_removed_and_a_missing_listed_file_named(tmp_path):
    root = write_folder(tmp_path / "train")
    given = images.ImageSpec(**spec(root, tmp_path))
    key = images.cache_key(images._listing(root)[0], given)
    (tmp_path / "cache").mkdir()
    dead = tmp_path / "cache" / f".{key}.999999999.tmp.npy"  # no such process
    dead.write_bytes(b"half a cache")
    prepare(spec(root, tmp_path), split={"val": 0, "test": 0})
    assert not dead.exists() and (tmp_path / "cache" / f"{key}.npy").is_file()
    (tmp_path / "list.csv").write_text("path,label\ntrain/cat/00.png,cat\ntrain/cat/99.png,cat\n")
    with pytest.raises(DataError) as caught:
        prepare({**spec(root, tmp_path), "images": str(tmp_path / "list.csv")}, split={"val": 0, "test": 0})
    assert str(caught.value) == f"image list {tmp_path / 'list.csv'}, line 3: 'train/cat/99.png' not found"


def fit_weights(train, val, *, augment=None, max_epochs=2):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    trainer = tc.Trainer(model, loss="cross_entropy", batch_size=5, max_epochs=max_epochs, seed=0, progress=False,
                         metrics=["accuracy"], data={"augment": augment, "normalize": {"mean": [0.5] * 3,
                                                                                       "std": [0.25] * 3}})
    history = trainer.fit(train, val=val)
    return trainer.model.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]


def test_a_cache_kept_on_disk_trains_exactly_as_the_same_pixels_in_memory(tmp_path):
    from traincraft.mapped import MappedSplit

    root = write_folder(tmp_path / "train", per_class=10)
    kwargs = dict(split={"val": 0.2, "test": 0.1}, seed=4, classes=["fox", "cat"])
    held = prepare(spec(root, tmp_path, in_memory=True), **kwargs)
    disk = prepare(spec(root, tmp_path, in_memory=False), **kwargs)
    assert isinstance(held.train, tuple) and isinstance(disk.train, MappedSplit)
    assert disk.class_names == held.class_names == ["fox", "cat"]
    for key in ("train", "val", "test"):  # the same samples, carved and filtered by rows only
        ours, theirs = getattr(disk, key), getattr(held, key)
        assert torch.equal(torch.from_numpy(np.asarray(disk.train.inputs)[ours.rows]), theirs[0])
        assert torch.equal(ours.targets, theirs[1])
    assert disk.normalize == held.normalize and disk.input_shape == held.input_shape
    flip = [{"name": "horizontal_flip"}]
    ours_w, ours_h = fit_weights(disk.train, disk.val, augment=flip)
    theirs_w, theirs_h = fit_weights(held.train, held.val, augment=flip)
    assert ours_h == theirs_h
    for a, b in zip(ours_w.values(), theirs_w.values()):
        assert torch.equal(a, b)


def test_auto_keeps_a_cache_on_disk_when_it_exceeds_a_quarter_of_the_memory_available(tmp_path, monkeypatch):
    from traincraft.mapped import MappedSplit

    root = write_folder(tmp_path / "train")  # 18 images of 3x8x8: 3456 bytes
    monkeypatch.setattr(images, "memory_available", lambda: 4 * 3456)
    assert isinstance(prepare(spec(root, tmp_path), split={"val": 0.2}).train, tuple)
    monkeypatch.setattr(images, "memory_available", lambda: 4 * 3456 - 1)
    assert isinstance(prepare(spec(root, tmp_path), split={"val": 0.2}).train, MappedSplit)
    with pytest.raises(DataError, match="dataset.in_memory must be auto, true or false, got 'yes'"):
        prepare(spec(root, tmp_path, in_memory="yes"))


def test_a_recipe_on_a_cache_on_disk_previews_trains_and_predicts_from_its_run_folder(tmp_path, capsys):
    import json

    from traincraft.cli import main

    root = write_folder(tmp_path / "train", per_class=8)
    recipe = {
        "name": "imgs", "seed": 0,
        "data": {"dataset": spec(root, tmp_path, in_memory=False), "split": {"val": 0.25, "test": 0.25},
                 "batch_size": 8, "augment": [{"name": "horizontal_flip"}]},
        "model": "cnn", "train": {"max_epochs": 1},
    }
    trainer = tc.Trainer.from_recipe(recipe, run_dir=tmp_path / "run", progress=False)
    trainer.fit()
    with Image.open(tmp_path / "run" / "plots" / "augment.png") as grid:
        assert grid.width > 64
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


def test_worker_processes_decode_every_file_in_order_and_name_the_first_bad_one(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "train", per_class=9)
    monkeypatch.setattr(images, "decoding_workers", lambda: 3)
    monkeypatch.setattr(images, "_WORKERS_FROM", 2)
    given = images.ImageSpec(**spec(root, tmp_path, resize="stretch"))
    pixels, labels = images.read_images(given)["train"]
    files = sorted(root.rglob("*.png"))
    assert np.array_equal(pixels, np.stack([images.decode(f, given) for f in files]))
    (root / "dog" / "04.png").write_bytes(b"not a png")
    (root / "fox" / "07.png").write_bytes(b"not a png either")
    with pytest.raises(DataError, match=f"image {root / 'dog' / '04.png'} cannot be read"):
        images.read_images(given)
    assert not list((tmp_path / "cache").glob(".*.tmp.npy"))  # no partial cache left behind


def test_show_batch_draws_the_augmented_training_images_of_a_recipe_without_training(tmp_path, capsys):
    import yaml

    from traincraft.cli import main

    root = write_folder(tmp_path / "train", per_class=8)
    recipe = {"name": "imgs", "seed": 0, "model": "cnn",
              "data": {"dataset": spec(root, tmp_path), "split": {"val": 0.25, "test": 0.25},
                       "augment": [{"name": "random_resized_crop", "size": [8, 8], "scale": [0.3, 0.6]}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "grid.png"
    assert main(["show-batch", str(tmp_path / "r.yaml"), "--count", "5", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"5 train images as data.augment makes them: {out}"
    plain = tmp_path / "plain.png"
    assert main(["show-batch", str(tmp_path / "r.yaml"), "data.augment=null", "--count", "5", "-o", str(plain)]) == 0
    with Image.open(out) as drawn, Image.open(plain) as unaugmented:
        assert drawn.size == unaugmented.size and drawn.size[0] > drawn.size[1] > 0
        assert not np.array_equal(np.asarray(drawn), np.asarray(unaugmented))  # the crops differ
    again = tmp_path / "again.png"
    assert main(["show-batch", str(tmp_path / "r.yaml"), "--count", "5", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # seeded
    assert main(["show-batch", "quickstart", "-o", str(tmp_path / "x.png")]) == 2
    assert "show-batch draws images read from files (dataset: {images: ...}); the data 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
