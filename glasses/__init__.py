"""glasses: a CNN ensemble that tells faces with glasses from faces without.

The domain library: data organisation, the input pipeline, the model and its search space, the
distributed random search, the ensemble and its evaluation. Orchestration lives in `tasks/` and
`flows/`; nothing here imports prefect and nothing runs at import time.
"""

__version__ = "0.1.0"
