"""Counts, rates and durations on the command line are checked by argparse: a usage error naming the
flag (exit 2) before anything starts, not a crash or a hang later."""

from __future__ import annotations

import pytest

from m2grl.cli import build_parser


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--rate", "0"], "argument --rate: must be a positive number, got 0"),
    (["demo", "--limit", "x"], "argument --limit: 'x' is not a whole number"),
    (["replay", "movielens-100k", "--rate", "nan"], "argument --rate: must be a positive number, got nan"),
    (["replay", "movielens-100k", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["bench", "load", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    (["bench", "load", "--idle-seconds", "-5"], "argument --idle-seconds: must be a positive number, got -5"),
    (["bench", "freshness", "--every", "inf"], "argument --every: must be a positive number, got inf"),
    (["bench", "freshness", "--probes", "0"], "argument --probes: must be at least 1, got 0"),
    (["bench", "ingest-scaling", "--consumers", "0"], "argument --consumers: must be at least 1, got 0"),
    (["bench", "train", "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
    (["bench", "scale", "--items", "1000,10"], "argument --items: item counts must be at least 1000, got 10"),
    (["bench", "scale", "--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (["bench", "rpc", "--swap-seconds", "0"], "argument --swap-seconds: must be a positive number, got 0"),
    (["query", "watch", "--seconds", "-1"], "argument --seconds: must be a positive number, got -1"),
    (["query", "--timeout", "zero", "embed", "item", "1"], "argument --timeout: 'zero' is not a number"),
])
def test_bad_counts_and_rates_are_usage_errors(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_good_values_pass_through_as_numbers() -> None:
    args = build_parser().parse_args(["bench", "load", "--concurrency", "8", "--seconds", "2.5"])
    assert (args.concurrency, args.seconds) == (8, 2.5)
