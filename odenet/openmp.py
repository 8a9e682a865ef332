"""How idle OpenMP threads wait: set before torch loads OpenMP, unless the user has.

torch's CPU ops run in OpenMP parallel regions; between two regions the worker threads
either spin (fast to wake, but they burn a core) or sleep. Measured here (2 cores, one
ODE-Net adjoint iteration, batch 128; `make bench` and the README's "Speed"):

    policy                    quiet machine   one busy process   two trainings at once
    OMP_WAIT_POLICY=PASSIVE   0.65 s          1.04 s             0.97 s each
    GOMP_SPINCOUNT=10000      0.52 s          1.49 s             1.49 s each
    libgomp's default spin    0.52 s          1.88 s             3.6-4.3 s each

So: spin briefly when the machine is idle as the run starts, sleep when it is not.
"""

from __future__ import annotations

import os

QUIET_LOAD_PER_CORE = 0.25  # 1-minute load average per core below which we call it idle
SPIN_COUNT = "10000"


def set_wait_policy() -> str:
    """Choose the policy (environment variables); returns a one-line description."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "OpenMP wait policy: set by the environment"
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform: the safe choice
        load = float("inf")
    if load < QUIET_LOAD_PER_CORE * (os.cpu_count() or 1):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        return f"OpenMP wait policy: GOMP_SPINCOUNT={SPIN_COUNT} (idle machine, load {load:.2f})"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return f"OpenMP wait policy: PASSIVE (busy machine, load {load:.2f})"
