"""The FastAPI gateway: API, batcher, backends (TorchServe, in-process), metrics, settings."""
