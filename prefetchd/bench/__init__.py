"""Benchmarks: several readers measured side by side in one run, reported as medians and ratios.

Speed is measured here, never asserted in tests (the machines are shared and noisy).
"""
