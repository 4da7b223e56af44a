"""``darklens train --help`` lists every ``--set`` key, and only real ones."""

import dataclasses
import re

from darklens.cli import TRAIN_SET_KEYS, build_parser
from darklens.train import TrainConfig


def test_train_help_lists_exactly_the_config_keys():
    body = "\n".join(line.split(":", 1)[-1] for line in TRAIN_SET_KEYS.splitlines()[1:])
    body = re.sub(r"\([^)]*\)", "", body)  # drop the notes in parentheses
    listed = {word for word in re.findall(r"[a-z_]+", body)}
    assert listed == {f.name for f in dataclasses.fields(TrainConfig)}


def test_train_help_shows_the_list(capsys):
    parser = build_parser()
    try:
        parser.parse_args(["train", "--help"])
    except SystemExit:
        pass
    assert "budget_min (fit the epochs to it)" in capsys.readouterr().out
