"""CLI text: ``darklens train --help`` lists every ``--set`` key (only real ones); darklens'
own warnings print as one line."""

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


def test_own_warnings_print_as_one_line(tmp_path, monkeypatch):
    import warnings

    from darklens.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after

    installed = []
    for _ in range(2):  # installing the format twice must not nest it
        assert main(["simulate", str(tmp_path / f"d{_}"), "--preset", "pylensing", "--train",
                     "1", "--val", "1", "--set", "image_size=16", "--device", "cpu"]) == 0
        installed.append(warnings.formatwarning)
    assert installed[0] is installed[1]
    line = warnings.formatwarning("a message", UserWarning, main.__code__.co_filename, 1)
    assert line == "darklens: warning: a message\n"
    other = warnings.formatwarning("b", UserWarning, "/elsewhere/lib.py", 7, line="x = 1")
    assert "/elsewhere/lib.py:7" in other
