"""Benchmarks: measured as ratios to a baseline run side by side, never asserted on time."""
