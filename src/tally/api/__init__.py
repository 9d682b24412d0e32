"""The HTTP API over metric definitions and values (`tally api serve`).

Shapes follow Sequence's usage-metric API and Exante's metric definitions and
values; see docs/api.md. Routes are thin: validation reuses the contracts in
`tally.contracts`, SQL lives in `tally.store`.
"""

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"the HTTP API needs the `api` extra ({exc.name} is missing): "
        "pip install 'tally-metering[api]'"
    ) from exc
