"""The M2GRL trainer: DGL graph mirror, walks, the multi-task model, rounds and the cold-start lane.

It reads the graphs through graphstore/ and publishes through m2grl/snapshots.py; it imports
nothing from ingest/ or rpc/.
"""
