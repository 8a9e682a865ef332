"""How idle OpenMP threads wait: set before torch loads OpenMP, unless the user has.

torch's CPU ops run in OpenMP parallel regions; between two regions the worker threads
either spin (fast to wake, but they burn a core) or sleep. `make bench-openmp` on this
2-core machine, one ODE-Net adjoint iteration (batch 128):

    policy                          alone     two trainings at once (each)
    OMP_WAIT_POLICY=PASSIVE         0.77 s    1.03 s, 0.98 s
    GOMP_SPINCOUNT=10000            0.55 s    1.51 s, 1.52 s
    libgomp's default (spin 300k)   0.52 s    3.17 s, 3.12 s

So: spin briefly when no other process is running as the run starts, sleep otherwise.
"Running" is the kernel's count of runnable tasks (/proc/loadavg), the least of a few
samples so that a process passing through does not count: the load average lags by
minutes and would call the machine busy right after a previous run ended.
"""

from __future__ import annotations

import os
import time

SPIN_COUNT = "10000"
SAMPLES, SAMPLE_GAP_S = 5, 0.01


def other_runnable_tasks() -> int | None:
    """Tasks ready to run besides this one (Linux); None where the kernel does not say."""
    try:
        counts = []
        for i in range(SAMPLES):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
            if i < SAMPLES - 1:
                time.sleep(SAMPLE_GAP_S)
    except (OSError, ValueError, IndexError):
        return None
    return max(min(counts) - 1, 0)


def set_wait_policy() -> str:
    """Choose the policy (environment variables); returns a one-line description."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "OpenMP wait policy: set by the environment"
    others = other_runnable_tasks()
    if others == 0:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        return f"OpenMP wait policy: GOMP_SPINCOUNT={SPIN_COUNT} (nothing else running)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    why = "unknown load" if others is None else f"{others} other task(s) running"
    return f"OpenMP wait policy: PASSIVE ({why})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_warning(threads: int | None) -> str | None:
    """A line saying that ``threads`` (torch's intra-op threads) exceed the cores this
    process may use, where they take turns on them (threads=64 on 2 cores: x100 slower
    per iteration, measured); None when they do not."""
    cores = usable_cores()
    if threads is None or threads <= cores:
        return None
    return (f"threads={threads} but this process may use {cores} core(s): the threads take "
            f"turns on them, which slows every step; threads={cores} or fewer runs faster")
