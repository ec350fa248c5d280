"""The `digitlab` command's flag parsing, in process: no (sub)command takes an abbreviated flag, an unknown flag is
one line naming the flag it may have meant, and the summary lines count in the singular or plural as they should."""
from __future__ import annotations

import argparse

import pytest

from digitlab.cli import build_parser, main

pytestmark = pytest.mark.quick


def every_parser(parser: argparse.ArgumentParser):
    """The parser and all its subcommands' parsers, at any depth."""
    yield parser
    for action in parser._actions:  # noqa: SLF001 (argparse has no API for its subparsers)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):
                yield from every_parser(sub)


def test_no_parser_takes_abbreviated_flags():
    parsers = list(every_parser(build_parser()))
    assert len(parsers) > 15  # every command, `data show` and `sweep show` included
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize("args, expected", [
    (["train", "--epoch", "3"], "digitlab train: error: unrecognized arguments: --epoch 3; did you mean --epochs?"),
    (["data", "show", "--sed", "3"], "digitlab data show: error: unrecognized arguments: --sed 3; "
                                     "did you mean --seed?"),
    (["eval", "run", "--figure=out"], "digitlab eval: error: unrecognized arguments: --figure=out; "
                                      "did you mean --figures?"),
    (["train", "--max", "3"], "digitlab train: error: unrecognized arguments: --max 3; did you mean --max-steps?"),
    (["train", "--no-such-flag"], "digitlab train: error: unrecognized arguments: --no-such-flag"),
])
def test_an_abbreviated_or_unknown_flag_is_an_error_with_a_suggestion(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == expected


def test_whole_flags_still_parse():
    args = build_parser().parse_args(["data", "show", "-n36", "--seed=2"])
    assert (args.n, args.seed) == (36, 2)


@pytest.mark.parametrize("epoch, words", [(1, "after 1 epoch,"), (2, "after 2 epochs,"), (0.5, "after 0.5 epochs,")])
def test_the_final_line_counts_epochs_in_the_right_number(epoch, words):
    from digitlab.commands.training import final_line

    row = {"epoch": epoch, "test_accuracy": 0.99, "test_loss": 0.03, "elapsed_s": 12.0}
    assert words in final_line(row)


@pytest.mark.parametrize("command, words", [
    (["data", "show"], "current folder"), (["eval"], "run folder"), (["plot"], "RUN/curves.png"),
    (["compare"], "current folder"), (["explain"], "run folder"),
])
def test_each_figure_command_says_where_its_files_go(command, words, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert words in help_text and ("printed" in help_text or "prints" in help_text)
