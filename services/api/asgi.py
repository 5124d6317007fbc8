"""The ASGI entry point for uvicorn and other servers: `uvicorn services.api.asgi:app`."""

from services.api.app import create_app

app = create_app()
