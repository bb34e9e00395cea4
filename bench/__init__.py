"""Benchmarks: each measures a baseline in the same run and records the ratio (bench/RESULTS.md, results.json)."""
