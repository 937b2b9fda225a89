"""The lab: what measures and shows the system rather than runs it — data-set readers, the
offline evaluation and its baselines (EGES-style, DeepWalk, popularity), plots, benchmarks, the
demo and the pipeline harness they share.

It may import every component; no component imports it (tests/test_layout.py).
"""

# The methods `m2grl eval` compares (lab/evaluation.py); here so the CLI can list them without torch.
EVAL_METHODS = ("m2grl", "deepwalk", "eges", "popularity")
