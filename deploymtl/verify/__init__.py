"""Numeric verification of artifacts: per-output comparison (`compare`), parity data saved beside artifacts and
re-checked on any backend (`parity`), localisation of the first diverging layer (`localize`), the task-metric gate
for reduced precision (`metrics_gate`) and the removed-parts check on exported graphs (`removed`)."""
