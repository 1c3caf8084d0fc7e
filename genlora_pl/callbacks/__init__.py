"""Callbacks: the one that changes training (:class:`AdapterCallback`: inject, anneal), the ones
that watch it (:class:`AdapterMonitor`, :class:`PredictionWriter`) and the one that keeps it safe
(:class:`FaultTolerance`)."""

from __future__ import annotations

from typing import Any

import genlora_pl.compat as compat
from genlora_pl.callbacks.adapters import AdapterCallback
from genlora_pl.callbacks.faults import FaultTolerance, TrainingDiverged
from genlora_pl.callbacks.monitor import AdapterMonitor
from genlora_pl.callbacks.predictions import PredictionWriter

__all__ = ["AdapterCallback", "AdapterMonitor", "FaultTolerance", "PredictionWriter", "TrainingDiverged"]


def __getattr__(name: str) -> Any:
    return compat.renamed(__name__, name)  # GenLoRACallback, until 0.3
