"""The M2GRL trainer: DGL graph mirror, walks, the multi-task model, snapshots (issue #4)."""
