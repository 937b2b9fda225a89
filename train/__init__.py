"""The M2GRL trainer: DGL graph mirror, walks, the multi-task model, snapshots (issue #4)."""

# The methods `m2grl eval` compares (train/evaluation.py); here so the CLI can list them without torch.
EVAL_METHODS = ("m2grl", "deepwalk", "eges", "popularity")
