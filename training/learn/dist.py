"""Process setup: one process, or one per rank under torchrun (DDP; gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node=2 -m typemoe.training.learn.pretrain --preset tiny --data shards/ --out runs/x

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process. Only rank 0
prints, logs metrics and writes checkpoints; every rank reads the data it needs itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this rank's GPU when CUDA is present, else the CPU; anything else is taken as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use --device cpu or auto")
    return dev


def setup(device: str = "auto", threads: int = 0) -> Dist:
    """Start the process group when launched by torchrun, pick the device, size the CPU thread pool."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        # ranks on one host share its cores; oversubscribing them makes every rank slower
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, local_rank=local_rank, world=world, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, also returned); a no-op in a single process."""
    if not dist.is_initialized():
        return x
    if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only; the bookkeeping tensors live on the CPU
        y = x.cuda()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        x.copy_(y.cpu())
    else:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
