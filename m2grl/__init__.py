"""m2grl: fresh multi-view graph embeddings (M2GRL) from a live behaviour stream."""

__version__ = "0.1.0"
