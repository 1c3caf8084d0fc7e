"""What adapters need from Lightning's distributed strategies, and nothing more.

Distribution itself is Lightning's (DDP, FSDP, ModelParallelStrategy for FSDP2). Two things are
ours: which modules of a backbone are its repeated blocks (the unit FSDP shards and activation
checkpointing recomputes), and how to see full parameters of a sharded model for measurements
(every rank must take part in the gather, or the collective deadlocks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def transformer_blocks(model: nn.Module, class_names: list[str] | None = None) -> list[nn.Module]:
    """The repeated blocks of ``model``.

    With ``class_names``, every module of those classes. Otherwise the children of the container
    (``nn.ModuleList`` / ``nn.Sequential``) of at least two same-class modules that holds the most
    parameters: ``blocks`` of a timm ViT, ``encoder.layer`` of BERT, ``h`` of GPT-2, the stages'
    blocks of a ResNet are found this way.
    """
    if class_names:
        found = [m for m in model.modules() if type(m).__name__ in class_names]
        if not found:
            names = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(f"block classes {class_names} match no module; the model has {names[:40]}.")
        return found
    best: list[nn.Module] = []
    best_size = -1
    for container in model.modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(container.children())
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for p in container.parameters())
        if size > best_size:
            best, best_size = children, size
    return best


def shard_fsdp2(
    model: nn.Module, mesh: Any, class_names: list[str] | None = None, fill: Callable[[nn.Module], None] | None = None
) -> int:
    """``fully_shard`` each block, then the whole model (FSDP2); returns the number of blocks.

    Adapters live inside the blocks, so they are sharded with them and trained like any other
    parameter; frozen base weights carry no gradient, so FSDP2 keeps no gradient shard for them.

    A model built on the meta device passes ``fill``, which gives a module's meta parameters their
    real values; each block is filled right before it is sharded, so a rank holds its shards plus
    one full block at a time, never a full copy of the model.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model, class_names)
    for block in blocks:
        if fill is not None:
            fill(block)
        fully_shard(block, mesh=mesh)
    if fill is not None:
        fill(model)  # what is outside the blocks: embeddings, final norm, head
    fully_shard(model, mesh=mesh)
    return len(blocks)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of the backbone's blocks.

    Non-reentrant matters: the reentrant variant drops gradients of parameters inside a block
    whose inputs do not require grad, which is every block of a frozen backbone with adapters.
    """
    if hasattr(model, "gradient_checkpointing_enable"):  # transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    if hasattr(model, "set_grad_checkpointing"):  # timm: non-reentrant unless TIMM_REENTRANT_CKPT says otherwise
        from timm.layers import use_reentrant_ckpt

        if use_reentrant_ckpt():
            raise ValueError(
                "TIMM_REENTRANT_CKPT is set, so timm would checkpoint re-entrantly and drop adapter gradients; "
                "unset it to use activation_checkpointing."
            )
        model.set_grad_checkpointing(True)
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    blocks = {id(b) for b in transformer_blocks(model)}
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: id(m) in blocks,
    )


@contextmanager
def full_parameters(root: nn.Module, backbone: nn.Module) -> Iterator[None]:
    """Inside, ``backbone``'s parameters are full tensors on every rank, also under FSDP1 / FSDP2.

    Call it on *every* rank: the gather is a collective. ``root`` is what the strategy wrapped
    (``trainer.strategy.model``), needed for FSDP1.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

    if any(isinstance(m, FSDP1) for m in root.modules()):
        with FSDP1.summon_full_params(root, writeback=False, recurse=True):
            yield
        return
    sharded = [m for m in backbone.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()


def gathered_in_turn(root: nn.Module, backbone: nn.Module) -> Iterator[set[int] | None]:
    """Full parameters a part at a time, for measurements of a large sharded model: yields the ids of
    the modules whose parameters are full right now. Under FSDP2 the root's own parameters (embeddings,
    head, GenLoRA's generator groups) stay gathered throughout and the blocks are gathered one by one,
    so a rank holds one block beyond its shards, never the whole model; elsewhere everything is full
    at once (``None``: every module). Iterate it to the end on *every* rank: each gather is a collective.
    """
    from torch.distributed.fsdp import FSDPModule

    blocks = [m for m in backbone.modules() if isinstance(m, FSDPModule) and m is not backbone]
    if not isinstance(backbone, FSDPModule) or not blocks:
        with full_parameters(root, backbone):
            yield None
        return
    inside = {id(m) for block in blocks for m in block.modules()}
    backbone.unshard()
    try:
        yield {id(m) for m in backbone.modules() if id(m) not in inside}
        for block in blocks:
            block.unshard()
            try:
                yield {id(m) for m in block.modules()}
            finally:
                block.reshard()
    finally:
        backbone.reshard()
