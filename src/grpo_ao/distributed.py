"""Data parallelism for the trainers: where this process stands, and the few collectives they need.

Launched with `accelerate launch --multi_gpu --num_processes N -m grpo_ao.cli ...` (or torchrun), each
of the N processes (ranks) holds a full copy of the model and its LoRA adapter. A recipe splits each
optimizer step's GLOBAL batch across the ranks, divides its local loss by the step's GLOBAL normaliser
(`global_sum` of the local counts), and sums the gradients over ranks before clipping:

    g = sum_r grad(L_r),   L_r = (sum of rank r's token losses) / (global count)
      = grad(sum of all token losses / global count)  = the one-process gradient of the same batch.

Every rank then applies the same clipped gradient with the same AdamW state, so the adapters stay
identical; `check_replicas_agree` verifies that (a checksum of the weights per rank) at every checkpoint.

What we deliberately do NOT do: wrap the model in DistributedDataParallel. DDP averages (not sums)
gradients, synchronises inside `backward()` and expects one forward per backward, which fights the
micro-batch loops, the injection hooks and peft's adapter switching; one explicit all-reduce after the
local backward passes gives exactly the one-process update and leaves the model untouched. With one
process every function here is a no-op and no process group exists, so plain `python` runs as before.
Only rank 0 writes files (metrics, samples, checkpoints, summaries) and prints.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from grpo_ao.errors import GrpoAoError

T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """This process's place in the run."""

    rank: int
    """0 .. world_size-1; rank 0 writes files and prints."""
    world_size: int
    """Number of processes; 1 without a launcher."""
    local_rank: int
    """Index on this machine (its GPU, when there are GPUs)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@functools.cache
def place() -> Place:
    """Read once from `accelerate.PartialState`, which starts the process group when a launcher set
    WORLD_SIZE > 1: NCCL on GPUs, gloo on CPUs (no CUDA visible). Plain `python`: rank 0 of 1."""
    import os

    from accelerate import PartialState

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise GrpoAoError("The grpo-ao trainers do not shard the model (FSDP) yet; each process holds a full copy. "
                          "Launch with configs/accelerate/ddp.yaml (see the README, 'Many GPUs').")
    state = PartialState(cpu=not torch.cuda.is_available())
    return Place(state.process_index, state.num_processes, state.local_process_index)


def _device() -> torch.device:
    """Where collective tensors live: the rank's GPU under NCCL, else the CPU (gloo)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_sum(x: T) -> T:
    """Sum of `x` over ranks (all-reduce), returned on every rank; int, float or tensor.

    Floats are summed in float64, so a loss added from N parts stays exact to ~1e-15.
    """
    if place().world_size == 1:
        return x
    if isinstance(x, torch.Tensor):
        buf = x.detach().to(_device()).clone()
        torch.distributed.all_reduce(buf)
        return buf.to(x.device)
    buf = torch.tensor([x], dtype=torch.int64 if isinstance(x, int) else torch.float64, device=_device())
    torch.distributed.all_reduce(buf)
    return type(x)(buf.item())


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """p.grad <- sum_r p.grad_r for every parameter, in one flat all-reduce. A missing grad counts as zeros
    (a rank with no rows in this step still joins the collective)."""
    if place().world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device())  # [sum of numels]
    torch.distributed.all_reduce(flat)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = chunk.view_as(p).to(p.device, p.dtype)


def gather_objects(obj: T) -> list[T]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects: records, metrics parts)."""
    if place().world_size == 1:
        return [obj]
    out: list[Any] = [None] * place().world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank got here."""
    if place().world_size > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache on disk); the others run it after, and read it."""
    if not place().is_main:
        barrier()
    yield
    if place().is_main:
        barrier()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank `rank`'s share of `items`: items[rank], items[rank + world], ...  (strided, so shares differ
    in length by at most one and `unshard` restores the order).

    >>> shard([0, 1, 2, 3, 4], 1, 2)
    [1, 3]
    """
    return list(items[rank::world])


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of `shard`: parts[r] = shard(items, r, len(parts)) -> items.

    >>> unshard([[0, 2, 4], [1, 3]])
    [0, 1, 2, 3, 4]
    """
    world = len(parts)
    out: list[Any] = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only."""
    if place().is_main:
        print(*args, **kwargs)


def require_divisible(value: int, field: str, fix: str) -> None:
    """A per-step count split across ranks must divide evenly: else the ranks' shares (and, for GRPO, the
    chunks) would not add up to the one-process batch."""
    world = place().world_size
    if value % world:
        raise GrpoAoError(f"{field}={value} is not divisible by the number of processes ({world}); {fix}")


def check_replicas_agree(params: Sequence[torch.nn.Parameter]) -> None:
    """Raise when the ranks' trainable weights differ: per parameter (sum, sum of squares) in float64,
    compared with rank 0's. They start equal (same seed or adapter) and get the same summed update, so
    any difference means a rank skipped a collective or loaded other weights."""
    if place().world_size == 1:
        return
    local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                         for p in params]).cpu()  # [P, 2]
    parts = gather_objects(local)
    for r, other in enumerate(parts[1:], start=1):
        if not torch.allclose(other, parts[0], rtol=1e-6, atol=1e-9):
            worst = (other - parts[0]).abs().max().item()
            raise GrpoAoError(f"rank {r}'s adapter weights differ from rank 0's (max checksum difference {worst:.3g}): "
                              "the ranks must start from the same adapter and seed. Check that every machine reads "
                              "the same model, adapter and grpo-ao version.")


def shutdown() -> None:
    """Tear down the process group, if one was started, before the interpreter exits: left to interpreter
    shutdown, gloo's threads can outlive it and abort the process ("terminate called without an active exception")
    after the run's work is done and written."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
