"""Locust load tests: the attention variants compared under the same load, with a report."""
