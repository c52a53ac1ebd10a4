"""Sweeps, compare, report, probe."""
