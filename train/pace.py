"""A round's pace: how many walks, how long, how many alignment repeats, how large a step and how
fast a rate. The walks, the pairs and the optimiser loop all read it."""

from __future__ import annotations

from dataclasses import dataclass

from m2grl.settings import TrainSettings


@dataclass(frozen=True)
class Pace:
    """What sets a round's size and rate apart: a full round walks from every node at ``lr``; an
    incremental one continues a trained model from what changed, with its own number of walks per
    node, shorter walks, fewer alignment repeats, larger steps and a lower rate (the
    ``incremental_*`` settings)."""

    everything: bool
    walks_per_node: int
    walk_length: int
    alignment_repeats: int
    batch_size: int
    lr: float

    @classmethod
    def of(cls, cfg: TrainSettings, *, full: bool) -> Pace:
        if full:
            return cls(True, cfg.walks_per_node, cfg.walk_length, cfg.alignment_repeats, cfg.batch_size, cfg.lr)
        return cls(False, cfg.incremental_walks_per_node, cfg.incremental_walk_length,
                   cfg.incremental_alignment_repeats, cfg.incremental_batch_size, cfg.incremental_lr)
