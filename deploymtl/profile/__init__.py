"""Profiling: batch sweeps, the edge batching scenario, artifact comparison, reports."""
