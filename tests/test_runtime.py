"""The process a run lives in (odenet/training/runtime.py), its GPU side checked on the CPU with
torch.cuda's queries patched: bf16 only with bf16 units, fp32 as IEEE float32, RNG states
of another machine, CUDA left alone by a CPU run."""

from __future__ import annotations

import pytest
import torch

from odenet.training import runtime


@pytest.fixture
def gpu(monkeypatch):
    """A machine whose torch sees CUDA GPUs of the capabilities given (index -> (major,
    minor)); the indices asked about are recorded in `asked`."""
    asked: list = []

    def make(*capabilities: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.version, "hip", None)

        def capability(device=None):
            index = torch.device(device).index if device is not None else 0
            asked.append(index)
            return capabilities[index or 0]

        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: True)  # counts emulation
        return asked

    return make


def test_auto_precision_refuses_emulated_bf16(gpu):
    """A V100 (7.0) or T4 (7.5) emulates bf16: torch.cuda.is_bf16_supported() says yes,
    precision=auto says fp32; an A100 (8.0) has bf16 units."""
    asked = gpu((7, 0), (7, 5), (8, 0))
    for index, want in ((0, "fp32"), (1, "fp32"), (2, "bf16")):
        device = torch.device(f"cuda:{index}")
        assert runtime.resolve_precision("auto", device) == want
        assert asked[-1] == index  # the configured GPU, not the current one
    assert runtime.resolve_precision("bf16", torch.device("cuda:0")) == "bf16"  # as asked


@pytest.fixture
def flags():
    """The backends' flags as they were, restored after the test."""
    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic,
             b.cudnn.benchmark)
    yield b
    (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic,
     b.cudnn.benchmark) = saved


def test_fp32_is_ieee_float32_and_cudnn_deterministic(flags):
    """torch lets cuDNN run float32 convolutions as TF32 by default (Ampere and newer):
    set_exact_math turns it off, with matmuls, and picks deterministic algorithms."""
    flags.cudnn.allow_tf32, flags.cudnn.deterministic, flags.cudnn.benchmark = True, False, True
    assert runtime.float32_math() == "tf32"
    assert runtime.set_exact_math() == "ieee"
    assert flags.cudnn.allow_tf32 is False and flags.cuda.matmul.allow_tf32 is False
    assert flags.cudnn.deterministic is True and flags.cudnn.benchmark is False
    flags.cuda.matmul.allow_tf32 = True
    assert runtime.float32_math() == "tf32"


def test_a_cpu_run_leaves_cuda_alone(monkeypatch):
    """On a GPU machine a CPU run's checkpoint does not initialize CUDA for its RNG."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)

    def initializes():
        raise AssertionError("CUDA initialized")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", initializes)
    state = runtime.rng_state()
    assert "cuda" not in state
    runtime.set_rng_state({**state, "cuda": [torch.zeros(8, dtype=torch.uint8)]})


def test_rng_states_of_a_machine_with_more_gpus(monkeypatch):
    """A checkpoint from a 4-GPU machine resumes on a 1-GPU one: the states of the GPUs
    here are restored, the others left."""
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": set_calls.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: [torch.full((8,), i, dtype=torch.uint8) for i in range(4)])
    state = runtime.rng_state()
    assert len(state["cuda"]) == 4
    runtime.set_rng_state(state)
    assert set_calls == [(0, 0)]
