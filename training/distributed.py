"""Multi-process training helpers: torchrun environment, process group, rank-aware utilities.

`python -m training train` runs unchanged as one process or under
`torchrun --nproc_per_node=N -m training train ...`. torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `DistributedContext.from_environment` reads
them, starts the process group (nccl on CUDA, gloo on CPU) and picks this rank's
device. Without those variables everything degrades to a single process.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist

LOGGER = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs and checkpoints (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device,
                         timeout_s: float = 1800.0) -> 'DistributedContext':
        """Start the process group when torchrun's variables are set; else one process.

        device: the device the config asks for; on CUDA each rank takes cuda:LOCAL_RANK.
        """
        world_size = int(os.environ.get('WORLD_SIZE', '1'))
        if world_size <= 1:
            return cls(device=device)
        missing = [k for k in ('RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in os.environ]
        if missing:
            raise RuntimeError(f'WORLD_SIZE={world_size} but {", ".join(missing)} not set: start '
                               'multi-process training with torchrun')
        rank = int(os.environ['RANK'])
        local_rank = int(os.environ['LOCAL_RANK'])
        if device.type == 'cuda':
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f'LOCAL_RANK {local_rank} but only '
                                   f'{torch.cuda.device_count()} CUDA device(s) visible')
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
            backend = 'nccl'
        else:
            backend = 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        LOGGER.info('rank %d/%d on %s (%s)', rank, world_size, device, backend)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                   backend=backend)

    def barrier(self) -> None:
        """Wait for all ranks (no-op in one process)."""
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the mean of `tensor` over ranks (a new tensor; itself in one process)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the sum of `tensor` over ranks (a new tensor; itself in one process)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average .grad over ranks for parameters outside DDP (e.g. learned loss weights)."""
        if not self.enabled:
            return
        for param in parameters:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(self.world_size)

    def close(self) -> None:
        """Destroy the process group if this context started one."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside DistributedDataParallel (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
