"""Benchmarks: `make bench` runs them all and writes benchmarks/results/latest.{md,json}."""
