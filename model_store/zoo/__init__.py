"""The model zoo: ResNet-50 with a pluggable attention kind, checkpoints, labels, and the
optimisation for inference. Free of serving concerns; ``registry`` imports without torch."""
