"""The shared shape of every data module: train / val / test splits, subsets, resumable loaders.

``batch_size`` is the *global* batch size: each of the ``world_size`` processes loads
``batch_size // world_size`` examples, so changing the number of GPUs or nodes does not change the
optimisation. ``backbone`` is linked from the model by the CLI; it decides the image transforms or
the tokenizer.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from genlora_pl.checks import is_int, is_number

# torchdata 0.11 calls a torch function deprecated since (a no-op): say nothing about it to users
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` into parts of a seeded permutation sized by ``fractions``; the first
    (training) part takes whatever rounding leaves, so every example lands in exactly one part.
    The parts are int64 arrays (8 bytes an example: a Python list of ten million indices would
    hold 360 MB)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    sizes = [int(round(f * n)) for f in fractions[1:]]
    sizes = [n - sum(sizes), *sizes]
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start : start + size])
        start += size
    return parts


def limit(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``count`` examples (all of them when ``count`` is None)."""
    if count is None or count >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return Subset(dataset, sorted(idx))


class ResumableSampler(DistributedSampler):
    """The training order, a pure function of ``(seed, epoch)``, whose position is saved in
    checkpoints (``StatefulDataLoader`` stores its ``state_dict``).

    Two things torchdata's own ``StatefulDistributedSampler`` and Lightning do not get right
    together, measured on Lightning 2.6 / torchdata 0.11: the saved state carries the *epoch*,
    because on resume Lightning builds the iterator (and loader workers draw their first indices)
    before it calls ``set_epoch``; and a state taken after the last batch of an epoch resumes at the
    start of the next one, because Lightning keeps using the restored, exhausted iterator for that
    next epoch.
    """

    def __init__(self, *args: Any, keyed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keyed = keyed
        self.yielded = 0
        self._resume_at: int | None = None

    def global_order(self) -> np.ndarray:
        """Every index of this epoch, before each process takes its share: a seeded permutation
        (``DistributedSampler``'s, padded by repetition to a multiple of the processes), as an
        int64 array, so a sampler over millions of rows holds no Python list of them."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g).numpy()
        padding = self.total_size - len(order)
        if padding > 0:
            return np.concatenate([order, np.tile(order, padding // len(order) + 1)[:padding]])
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        """Indices, or ``(epoch, index)`` keys with ``keyed``: a :class:`TransformedDataset` with a
        seed draws each sample's augmentation from them, in whichever worker loads it."""
        # a generator: nothing is drawn until the first batch, after Lightning's set_epoch
        start, self._resume_at = self._resume_at or 0, None
        self.yielded = start
        epoch = self.epoch
        mine = self.global_order()[self.rank : self.total_size : self.num_replicas]
        for value in mine[start:]:  # one index at a time: no list of the whole epoch
            index = int(value)
            self.yielded += 1
            yield (epoch, index) if self.keyed else index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, yielded = int(state["epoch"]), int(state["yielded"])
        if yielded >= self.num_samples:
            epoch, yielded = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume_at = yielded


class BucketedSampler(ResumableSampler):
    """:class:`ResumableSampler` whose batches hold examples of similar length, so little of a
    batch is padding: the seeded permutation is cut into chunks of ``50`` global batches, each chunk
    sorted by length and cut into global batches, and the batches shuffled (seeded). Each process's
    share of a global batch is then of similar lengths too, and the order is still a pure function
    of ``(seed, epoch)``, so resuming mid-epoch works as for the plain sampler."""

    def __init__(self, *args: Any, lengths: Sequence[int], global_batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths, self.global_batch = np.asarray(lengths), global_batch

    def global_order(self) -> np.ndarray:
        order = super().global_order()
        chunk = self.global_batch * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]  # longest first, ties in seeded order
            batches += [part[i : i + self.global_batch] for i in range(0, len(part), self.global_batch)]
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch + 1_000_003)
        return np.concatenate([batches[b] for b in torch.randperm(len(batches), generator=g).tolist()])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63)


class TransformedDataset(Dataset):
    """Apply a transform to the input of ``(input, label)`` pairs (images stay lazy).

    With ``seed``, a random transform (augmentation) is made reproducible: indexed with an
    ``(epoch, index)`` key (what a keyed :class:`ResumableSampler` yields) it draws from RNGs seeded
    by ``(seed, epoch, index)`` and leaves the process's own RNG states as they were. So a resumed fit
    replays the augmentation of an uninterrupted one exactly, and the number of loader workers does
    not change a result.
    """

    def __init__(self, base: Dataset, transform: Callable | None, seed: int | None = None) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        x, y = self.base[index]
        if self.transform is None:
            return x, y
        if self.seed is None or epoch is None:
            return self.transform(x), y
        seed = sample_seed(self.seed, epoch, index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.transform(x), y
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class DataModule(L.LightningDataModule):
    """Base of the data modules: splits, subsampling, global batch size, loaders.

    Args:
        batch_size: global batch size over all devices and nodes.
        num_workers: loader worker processes per device.
        val_fraction: share of the data held out for validation when the source has no validation
            split of its own.
        test_fraction: share held out for test when the source has no test split (a source with a
            test split keeps it; one with neither gives up ``val_fraction + test_fraction`` < 1).
        max_train_samples: use a seeded random subset of the training split (small machines).
        max_eval_samples: the same for validation and test.
        eval_batch_size: global batch size of validation, test and predict (``null``: ``batch_size``);
            generation-based evaluation runs faster in larger batches.
        seed: seed of splits and subsets: which examples are train, val and test stays the same
            whatever the run's seed.
        order_seed: seed of the training order and of random augmentation; ``null`` (default): the
            run's seed (``seed_everything``), so runs with different seeds see the data in different
            orders, as well as starting from different adapters; without a run seed, ``seed``.
        backbone: the model's backbone name (linked by the CLI); picks transforms or tokenizer.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        order_seed: int | None = None,
        backbone: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not is_int(value, 1):
                raise ValueError(f"{name}={value!r} is not valid; give a positive integer.")
        if not is_number(val_fraction) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} is not valid; it must lie in (0, 1).")
        if not is_number(test_fraction) or not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction!r} is not valid; it must lie in [0, 1).")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction={val_fraction!r} and test_fraction={test_fraction!r} add up to "
                f"{val_fraction + test_fraction:g} and leave no training data; keep their sum below 1."
            )
        for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value!r} is not valid; give a positive integer or null.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        self._order_seed = order_seed
        self.backbone = backbone
        self.splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------- for subclasses
    def load_splits(self) -> dict[str, Dataset]:
        """``{"train", "val", "test"}`` datasets (of ``(input, label)`` pairs for classification)."""
        raise NotImplementedError

    @property
    def order_seed(self) -> int:
        """The seed of the training order (see ``order_seed`` in the class docstring)."""
        if self._order_seed is not None:
            return self._order_seed
        run = os.environ.get("PL_GLOBAL_SEED")  # what Lightning's seed_everything sets
        return int(run) if run is not None else self.seed

    def carve(self, n: int, *, val: bool = True, test: bool = True) -> dict[str, np.ndarray]:
        """The one place splits are carved: row numbers of ``train`` and of whichever of ``val``
        (``val_fraction``) and ``test`` (``test_fraction``) the source lacks, from one seeded
        permutation of ``range(n)``; every row lands in exactly one part."""
        fractions = [self.val_fraction if val else 0.0, self.test_fraction if test else 0.0]
        parts = seeded_split(n, [1 - sum(fractions), *fractions], self.seed)
        wanted = ("train", "val" if val else None, "test" if test else None)
        return {name: part for name, part in zip(wanted, parts, strict=True) if name}

    def carve_dataset(self, dataset: Dataset, *, val: bool = True, test: bool = True) -> dict[str, Dataset]:
        """:meth:`carve` as ``Subset`` views of ``dataset``."""
        return {name: Subset(dataset, rows) for name, rows in self.carve(len(dataset), val=val, test=test).items()}

    def wrap(self, split: str, dataset: Dataset) -> Dataset:
        """Attach the split's transform; image modules override it."""
        return dataset

    def collate(self, batch: list[Any]) -> Any:
        return torch.utils.data.default_collate(batch)

    def make_sampler(self, dataset: Dataset, parts: dict[str, int]) -> ResumableSampler:
        """The training sampler (a subclass may bucket by length); resumable in either case."""
        keyed = isinstance(dataset, TransformedDataset) and dataset.seed is not None
        return ResumableSampler(dataset, shuffle=True, seed=self.order_seed, keyed=keyed, **parts)

    # ------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = self.load_splits()
        counts = {"train": self.max_train_samples, "val": self.max_eval_samples, "test": self.max_eval_samples}
        self.splits = {s: self.wrap(s, limit(d, counts[s], self.seed)) for s, d in raw.items()}

    def describe(self, split: str, index: int) -> dict[str, Any]:
        """What can be said about example ``index`` of a split beyond its label, for prediction
        files: ``{"text": ...}`` for text, ``{"path": ...}`` for image files, else nothing."""
        self.setup()
        dataset = self.splits["test" if split == "predict" else split]
        while True:  # unwrap subsets and transforms down to the source
            if isinstance(dataset, Subset):
                dataset, index = dataset.dataset, dataset.indices[index]
            elif isinstance(dataset, TransformedDataset):
                dataset = dataset.base
            else:
                break
        if hasattr(dataset, "texts"):
            return {"text": dataset.texts[index]}
        if hasattr(dataset, "samples"):  # torchvision ImageFolder
            return {"path": str(dataset.samples[index][0])}
        return {}

    def per_device_batch_size(self, split: str = "train") -> int:
        """This process's share of the global batch size (of ``eval_batch_size`` outside training)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        size = self.batch_size if split == "train" else (self.eval_batch_size or self.batch_size)
        if size % world:
            key = "batch_size" if split == "train" else "eval_batch_size"
            raise ValueError(
                f"{key}={size} cannot be split over {world} processes; "
                f"give a multiple of {world} (the global batch size)."
            )
        return size // world

    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        """A ``StatefulDataLoader``: its position goes into checkpoints, so a fit resumed from a
        mid-epoch checkpoint continues with the next batch instead of restarting the epoch. Its own
        generator seeds the workers, so building an iterator does not draw from the global RNG
        (which a resumed fit restores; see ``faults.FaultTolerance``)."""
        self.setup()
        dataset = self.splits[split]
        sampler = None
        if shuffle:
            # Given here for any number of processes (Lightning keeps a DistributedSampler it is
            # handed): the order depends only on (seed, epoch), and its position is resumable.
            parts = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
            parts = parts or {"num_replicas": 1, "rank": 0}
            sampler = self.make_sampler(dataset, parts)
        return StatefulDataLoader(
            dataset,
            batch_size=self.per_device_batch_size(split),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            generator=torch.Generator().manual_seed(self.order_seed),
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", shuffle=False)


class ClassificationData(DataModule):
    """Base of the classification data modules: a data module with label names, whose count the
    CLI passes to the model as ``num_classes``."""

    CLASSES: ClassVar[tuple[str, ...]] = ()  # fixed label names; data-dependent modules override classes

    @property
    def classes(self) -> list[str]:
        return list(self.CLASSES)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
