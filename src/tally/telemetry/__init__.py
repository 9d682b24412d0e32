"""Prometheus metrics, the /metrics /healthz /readyz server, and structured logs."""
