"""The HTTP API of `kpdd serve` (FastAPI): the same services as the CLI, over HTTP."""
