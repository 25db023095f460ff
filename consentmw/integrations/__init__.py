"""Framework integrations: FastAPI dependencies (`fastapi`), Django settings and tags (`django`)."""
