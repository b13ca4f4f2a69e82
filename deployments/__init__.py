"""Prefect deployments of the glasses pipeline: prefect.yaml (a process work pool) and serve.py
(`glasses serve`, no work pool)."""
