"""Measurement-driven choices: timing, the algorithm bench, and (later) the autotuner and its cache."""
