"""Benchmarks behind `make bench`: `python -m bench.grade_throughput`."""
