"""The serving tier: decode and preprocess, classify, the TorchServe handler and protocol,
archives and the launcher. ``images`` and ``protocol`` import without torch (the gateway's)."""
