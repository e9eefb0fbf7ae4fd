"""Benchmarks: scripts that print counts, latencies and ratios (``make bench``); no pass/fail thresholds."""
