"""Backends behind one small interface: TorchServe (the product path) and in-process."""
