"""The serving core: decode and preprocess, classify, the TorchServe handler, and the archive
builder that packs them with a model. What it agrees on with the gateway is ``contract``."""
