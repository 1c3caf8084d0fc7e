"""Data modules. Each is a ``LightningDataModule`` with a global ``batch_size`` and a ``num_classes``
that the CLI passes on to the model."""

from genlora_pl.data.base import ClassificationData
from genlora_pl.data.images import (
    CIFAR10Data,
    CIFAR100Data,
    DigitsData,
    FashionMNISTData,
    ImageData,
    ImageFolderData,
    MNISTSubsetData,
)
from genlora_pl.data.text import BBCNewsData, TextClassificationData, TextData, TweetSentimentData

__all__ = [
    "BBCNewsData",
    "CIFAR10Data",
    "CIFAR100Data",
    "ClassificationData",
    "DigitsData",
    "FashionMNISTData",
    "ImageData",
    "ImageFolderData",
    "MNISTSubsetData",
    "TextClassificationData",
    "TextData",
    "TweetSentimentData",
]
