"""TorchServe as a process: start it over the archives and wait until every model is ready
(``launcher``), start it again when its frontend dies (``supervisor``), and the read-only door
to its management API in a worker container (``management_gate``)."""
