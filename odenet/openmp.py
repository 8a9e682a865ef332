"""How idle OpenMP threads wait: set before torch loads OpenMP, unless the user has.

torch's CPU ops run in OpenMP parallel regions; between two regions the worker threads
either spin (fast to wake, but they burn a core) or sleep. Measured here (2 cores, one
ODE-Net adjoint iteration, batch 128; `make bench` and the README's "Speed"):

    policy                    quiet machine   one busy process   two trainings at once
    OMP_WAIT_POLICY=PASSIVE   0.65 s          1.04 s             0.97 s each
    GOMP_SPINCOUNT=10000      0.52 s          1.49 s             1.49 s each
    libgomp's default spin    0.52 s          1.88 s             3.6-4.3 s each

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
