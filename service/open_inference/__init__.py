"""The Open Inference Protocol (KServe V2) on the gateway: its names and JSON schemas
(``protocol``), and reading requests and writing answers with the binary tensor data and
classification extensions (``codec``). The routes are ``service/routes/v2.py``."""
