"""The solvers' traffic between the host and the state's device, in one place.

On a GPU the host queues work and runs ahead. Reading a number from a device tensor
(float(), bool(), .item()) waits until the device has done everything queued before it
(a sync), and so does copying host data into a device tensor from pageable memory
(torch.tensor(x, device="cuda")). The solvers keep both off their hot loop:
- a time func sees is made on the device from the number itself
  (``torch.scalar_tensor``: a fill, no copy), so evaluations cost no traffic
  (``Problem.time``);
- ``upload``: host numbers (e.g. dense-output weights) as a device tensor; on CUDA through
  pinned memory, queued on the stream without waiting;
- ``read``: the only way the solvers read a number from a tensor: on CUDA each call is a
  sync. An adaptive step reads once (its accept/reject decision), a solve a few times more.
``TRAFFIC`` counts both, so tests and benches can check where the syncs are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Traffic:
    """Counts since the process started (tests take differences)."""

    reads = 0  # numbers read from tensors: each a sync when the tensor is on a GPU
    uploads = 0  # host data copied into tensors (non-blocking on a GPU)


TRAFFIC = Traffic()


def read(x) -> float:
    """float(x), counted when x is a tensor (a device-to-host sync on a GPU)."""
    if isinstance(x, torch.Tensor):
        TRAFFIC.reads += 1
    return float(x)


def read_all(tensors: Sequence[torch.Tensor]) -> list[float]:
    """float() of each of ``tensors`` (numbers of one element), in one read: one sync."""
    TRAFFIC.reads += 1
    return torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).tolist()


def upload(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a 1-D tensor on ``device``: on a GPU from pinned memory without
    waiting for it (torch's host allocator keeps the pinned block until the copy has run);
    elsewhere torch.tensor."""
    TRAFFIC.uploads += 1
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    host = torch.tensor(values, dtype=dtype, pin_memory=True)
    return host.to(device, non_blocking=True)
