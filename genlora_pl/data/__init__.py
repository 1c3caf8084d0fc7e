"""Data modules. Each is a ``LightningDataModule`` with a global ``batch_size``; a classification one
has a ``num_classes`` and class names that the CLI passes on to the model, an instruction one scores
generated answers."""

from genlora_pl.data.base import ClassificationData, DataModule
from genlora_pl.data.cipher import CipherData
from genlora_pl.data.facts import FactsData
from genlora_pl.data.images import (
    CIFAR10Data,
    CIFAR100Data,
    DigitsData,
    FashionMNISTData,
    ImageData,
    ImageFolderData,
    MNISTSubsetData,
)
from genlora_pl.data.instructions import InstructionData, ReasoningGymData
from genlora_pl.data.text import BBCNewsData, TextClassificationData, TextData, TweetSentimentData

__all__ = [
    "BBCNewsData",
    "CIFAR10Data",
    "CIFAR100Data",
    "CipherData",
    "ClassificationData",
    "DataModule",
    "DigitsData",
    "FactsData",
    "FashionMNISTData",
    "ImageData",
    "ImageFolderData",
    "InstructionData",
    "MNISTSubsetData",
    "ReasoningGymData",
    "TextClassificationData",
    "TextData",
    "TweetSentimentData",
]
