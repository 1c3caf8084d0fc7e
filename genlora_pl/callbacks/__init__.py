"""Callbacks: the one that changes training (:class:`GenLoRACallback`: inject, anneal), the ones
that watch it (:class:`AdapterMonitor`, :class:`PredictionWriter`) and the one that keeps it safe
(:class:`FaultTolerance`)."""

from __future__ import annotations

from genlora_pl.callbacks.faults import FaultTolerance, TrainingDiverged
from genlora_pl.callbacks.genlora import GenLoRACallback
from genlora_pl.callbacks.monitor import AdapterMonitor
from genlora_pl.callbacks.predictions import PredictionWriter

__all__ = ["AdapterMonitor", "FaultTolerance", "GenLoRACallback", "PredictionWriter", "TrainingDiverged"]
