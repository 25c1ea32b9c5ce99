"""``python -m bench.faults``: the fault matrix in its long form, as a table."""
