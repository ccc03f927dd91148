import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from traincraft.data import (
    DatasetBatches,
    LoaderBatches,
    TensorBatches,
    epoch_order,
    make_batches,
    make_predict_batches,
    shard,
    split_off,
)
from traincraft.errors import DataError


def collect(batches, epoch=0, start=0):
    return list(batches.epoch(epoch, start=start))


def test_tensor_batches_cover_every_sample_once_in_a_seeded_order():
    X, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    batches = make_batches((X, y), batch_size=4, shuffle=True, seed=3)
    assert isinstance(batches, TensorBatches)
    assert len(batches) == 3 and batches.batch_sizes(0) == [4, 4, 2]
    got = torch.cat([t for _, t in collect(batches)])
    assert sorted(got.tolist()) == list(range(10))
    assert torch.equal(got, epoch_order(10, 0, shuffle=True, seed=3))
    # inputs follow the same order as the target
    assert torch.equal(torch.cat([x for x, _ in collect(batches)]).squeeze(1).long(), got)


def test_order_depends_on_seed_and_epoch_only():
    a0, a1 = epoch_order(50, 0, shuffle=True, seed=1), epoch_order(50, 1, shuffle=True, seed=1)
    assert not torch.equal(a0, a1)
    assert torch.equal(a0, epoch_order(50, 0, shuffle=True, seed=1))
    assert not torch.equal(a0, epoch_order(50, 0, shuffle=True, seed=2))
    assert torch.equal(epoch_order(5, 7, shuffle=False, seed=1), torch.arange(5))


def test_resume_mid_epoch_gives_exactly_the_remaining_batches():
    X, y = torch.randn(23, 3), torch.arange(23)
    batches = make_batches((X, y), batch_size=5, shuffle=True, seed=0)
    full = collect(batches, epoch=2)
    rest = collect(batches, epoch=2, start=3)
    assert len(rest) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_unshuffled_batches_are_views_in_order():
    X, y = torch.randn(7, 2), torch.arange(7)
    batches = collect(make_batches((X, y), batch_size=3, shuffle=False, seed=0))
    assert [t.tolist() for _, t in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches[0][0].data_ptr() == X.data_ptr()  # a view, no copy


def test_numpy_float64_becomes_float32_and_tuple_and_dict_inputs_are_sliced():
    X = np.random.rand(6, 2)
    y = np.arange(6)
    (xb, yb), *_ = collect(make_batches((X, y), batch_size=4, shuffle=False, seed=0))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    tup = (torch.randn(6, 2), torch.randn(6, 3))
    (xt, _), *_ = collect(make_batches((tup, y), batch_size=4, shuffle=True, seed=0))
    assert isinstance(xt, tuple) and xt[0].shape == (4, 2) and xt[1].shape == (4, 3)
    dic = {"a": torch.randn(6, 2), "b": torch.randn(6)}
    (xd, _), *_ = collect(make_batches((dic, y), batch_size=4, shuffle=True, seed=0))
    assert set(xd) == {"a", "b"} and xd["b"].shape == (4,)


def test_tensor_dataset_is_sliced_in_memory():
    ds = TensorDataset(torch.randn(9, 2), torch.arange(9))
    batches = make_batches(ds, batch_size=4, shuffle=False, seed=0)
    assert isinstance(batches, TensorBatches)
    assert [t.tolist() for _, t in collect(batches)][-1] == [8]


class Squares(Dataset):
    def __len__(self):
        return 11

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i * i)


def test_dataset_follows_the_same_seeded_order_and_resumes_by_index():
    batches = make_batches(Squares(), batch_size=4, shuffle=True, seed=5)
    assert isinstance(batches, DatasetBatches) and len(batches) == 3
    got = torch.cat([x.squeeze(1) for x, _ in collect(batches, epoch=1)]).long()
    assert torch.equal(got, epoch_order(11, 1, shuffle=True, seed=5))
    rest = collect(batches, epoch=1, start=2)
    assert torch.equal(rest[0][0], collect(batches, epoch=1)[2][0])


def test_dataloader_is_used_as_is_and_set_epoch_is_called():
    class Sampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(6))

        def __len__(self):
            return 6

    sampler = Sampler()
    loader = DataLoader(TensorDataset(torch.randn(6, 2), torch.arange(6)), batch_size=4, sampler=sampler)
    batches = make_batches(loader, batch_size=99, shuffle=True, seed=0)
    assert isinstance(batches, LoaderBatches) and len(batches) == 2
    collect(batches, epoch=4)
    assert sampler.epochs == [4]
    assert collect(batches, start=1)[0][1].tolist() == [4, 5]


def test_sharding_takes_each_sample_once_and_evens_out_training_steps():
    order = torch.arange(5)
    assert shard(order, 0, 2).tolist() == [0, 2, 4]
    assert shard(order, 1, 2).tolist() == [1, 3]
    evals = [TensorBatches(torch.randn(5, 1), torch.arange(5), 2, rank=r, world_size=2) for r in (0, 1)]
    seen = [t.tolist() for b in evals for _, t in collect(b)]
    assert sorted(sum(seen, [])) == [0, 1, 2, 3, 4]
    assert [len(b) for b in evals] == [2, 1]  # evaluation: each its own samples, no repeats
    trains = [TensorBatches(torch.randn(5, 1), torch.arange(5), 2, rank=r, world_size=2, equal_steps=True)
              for r in (0, 1)]
    assert [len(b) for b in trains] == [2, 2]  # training: the same number of steps everywhere
    assert [b.batch_sizes(0) for b in trains] == [[2, 1], [2, 0]]  # rank 1's last batch is a stand-in


def test_bad_data_gets_one_clear_line():
    with pytest.raises(DataError, match="unsupported type list of 3 items; accepted: a tuple"):
        make_batches([1, 2, 3], batch_size=2, shuffle=False, seed=0)
    with pytest.raises(DataError, match=r"different numbers of samples: inputs float32\[5, 2\], target int64\[4\]"):
        make_batches((torch.randn(5, 2), torch.arange(4)), batch_size=2, shuffle=False, seed=0)
    with pytest.raises(DataError, match="empty data"):
        make_batches((torch.randn(0, 2), torch.arange(0)), batch_size=2, shuffle=False, seed=0)
    with pytest.raises(DataError, match="predict data: unsupported type str"):
        make_predict_batches("x.csv", batch_size=2)


def test_split_off_is_seeded_disjoint_and_complete():
    X, y = torch.arange(20).float().unsqueeze(1), torch.arange(20)
    (xt, yt), (xv, yv) = split_off((X, y), 0.25, seed=1)
    assert len(yv) == 5 and len(yt) == 15
    assert sorted(torch.cat([yt, yv]).tolist()) == list(range(20))
    assert torch.equal(xv.squeeze(1).long(), yv)
    (_, yt2), (_, yv2) = split_off((X, y), 0.25, seed=1)
    assert torch.equal(yv, yv2)
    train_ds, val_ds = split_off(Squares(), 0.3, seed=0)
    assert len(train_ds) + len(val_ds) == 11 and len(val_ds) == 3
    with pytest.raises(DataError, match="cannot split a DataLoader"):
        split_off(DataLoader(Squares()), 0.2, seed=0)


class _Noisy(torch.utils.data.Dataset):
    """Each sample draws from random, numpy and torch in its worker and notes the worker's pid."""

    def __init__(self, folder):
        self.folder = folder
        self.x = torch.arange(24, dtype=torch.float32).view(12, 2)

    def __len__(self):
        return 12

    def __getitem__(self, i):
        import os
        import random

        import numpy as np

        with open(self.folder / f"{os.getpid()}.pid", "a") as handle:
            handle.write(".")
        noise = random.random() + float(np.random.rand()) + torch.rand(()).item()
        return self.x[i] + noise, torch.tensor(i % 2)


def _worker_epochs(tmp_path, persistent, epochs=3, start_epoch=0, start=0):
    folder = tmp_path / f"p{persistent}{start_epoch}{start}"
    folder.mkdir()
    batches = DatasetBatches(_Noisy(folder), 3, shuffle=True, seed=5, num_workers=2,
                             persistent_workers=persistent)
    seen = [[x.clone() for x, _ in batches.epoch(e, start if e == start_epoch else 0)]
            for e in range(start_epoch, epochs)]
    return seen, sorted(p.stem for p in folder.glob("*.pid"))


def test_persistent_workers_draw_what_fresh_workers_draw_each_epoch_and_live_across_epochs(tmp_path):
    fresh, fresh_pids = _worker_epochs(tmp_path, persistent=False)
    kept, kept_pids = _worker_epochs(tmp_path, persistent=True)
    assert len(fresh_pids) == 6 and len(kept_pids) == 2  # two workers an epoch, or two for the fit
    for a, b in zip(fresh, kept):
        assert len(a) == len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(kept[0]), torch.cat(kept[1]))  # each epoch draws anew
    # Resumed in the middle of epoch 1 (a fresh process: new workers), the rest is the same.
    resumed, _ = _worker_epochs(tmp_path, persistent=True, start_epoch=1, start=2)
    assert all(torch.equal(x, y) for x, y in zip(resumed[0], kept[1][2:]))
    assert all(torch.equal(x, y) for x, y in zip(resumed[1], kept[2]))
