"""Prometheus instruments (instruments.py), the /metrics /healthz /readyz server, and structured logs."""
