"""Settings: the typed schemas of ``configs/`` and their validation (schema.py), the
learning-rate schedules they name (schedules.py), and the one error a bad setting raises
(errors.py). Imports only the solver library, so every layer above may use it."""
