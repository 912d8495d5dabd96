"""Benchmarks behind `refine-bench bench ...`: each returns a flat dict of named numbers."""
