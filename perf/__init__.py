"""The performance harness the benchmarks (``bench``), the load tests (``loadtests``) and the
test suite share: starting a stack (``stack``: archives, TorchServe, gateway, Prometheus), the
load loops (``load``: closed loop and Poisson open loop, with the summary of a run), the image
pools (``images``), the one definition of capacity at an SLO (``slo``), and the tables, progress
and JSON results every benchmark prints and writes (``common``)."""
