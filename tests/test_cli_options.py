"""Options several commands share have one declaration and one syntax: node patterns (--exclude/--include)
and the release budget (--max-drop, --min-agreement, --min-embedding-cosine, --use-ci)."""

from __future__ import annotations

import pytest

from calib.cli import build_parser
from calib.cli.common import budget_from_args, split_patterns
from calib.verdict import ReleaseBudget

_REQUIRED = {"build": ["--calibration", "latest"], "sensitivity": ["--ranges", "latest"],
             "validate": ["--engine", "latest"], "report": ["latest"], "gate": ["latest"]}


def _parse(command: str, *argv: str):
    return build_parser().parse_args([command, *_REQUIRED[command], *argv])


def test_split_patterns_keeps_a_regex_whole():
    assert split_patterns("a,b") == ("a", "b")
    assert split_patterns(" a , ,b ") == ("a", "b")
    assert split_patterns("re:layer\\.(0|1){1,2}/x") == ("re:layer\\.(0|1){1,2}/x",)
    assert split_patterns("a,re:x{1,2},y") == ("a", "re:x{1,2},y")  # a re: pattern runs to the value's end
    assert split_patterns("*/attention/*") == ("*/attention/*",)


@pytest.mark.parametrize("command", ["build", "sensitivity"])
def test_exclude_and_include_take_space_and_comma_separated_patterns_in_both_commands(command):
    spaced = _parse(command, "--exclude", "a", "b", "--include", "x", "y")
    assert spaced.exclude == ("a", "b") and spaced.include == ("x", "y")
    commas = _parse(command, "--exclude", "a,b", "--include", "x,y")
    assert commas.exclude == ("a", "b") and commas.include == ("x", "y")
    mixed = _parse(command, "--exclude", "a,b", "c", "re:layer\\.{1,2}/dense", "--exclude", "d")
    assert mixed.exclude == ("a", "b", "c", "re:layer\\.{1,2}/dense", "d")  # a repeated option adds
    assert _parse(command, "--exclude", "re:a,b", "x y").exclude == ("re:a,b", "x y")
    none = _parse(command)
    assert tuple(none.exclude) == () and tuple(none.include) == ()


def test_exclude_and_include_are_one_declaration():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices

    def action(command, option):
        return next(a for a in commands[command]._actions if option in a.option_strings)

    for option in ("--exclude", "--include"):
        build, sens = action("build", option), action("sensitivity", option)
        assert (type(build), build.nargs, build.metavar) == (type(sens), sens.nargs, sens.metavar), option


@pytest.mark.parametrize("command", ["validate", "sensitivity", "report", "gate"])
def test_every_budget_option_takes_a_number_or_none(command):
    for option, dest in (("--max-drop", "max_drop"), ("--min-agreement", "min_agreement"),
                         ("--min-embedding-cosine", "min_embedding_cosine")):
        assert getattr(_parse(command, option, "0.25"), dest) == 0.25
        for off in ("none", "None", "off"):
            args = _parse(command, option, off, "--max-drop" if dest != "max_drop" else "--min-agreement", "1")
            assert getattr(budget_from_args(args), dest) is None, (command, option, off)
    with pytest.raises(SystemExit):
        _parse(command, "--max-drop", "half")


def test_what_an_option_not_given_means_per_command():
    # report and validate --method: nothing given is the stage's default budget; a given option keeps the others'
    # defaults (calib.verdict's)
    for command in ("report", "validate"):
        assert budget_from_args(_parse(command), unset=ReleaseBudget(), optional=True) is None
        assert budget_from_args(_parse(command, "--max-drop", "1"), unset=ReleaseBudget(), optional=True) \
            == ReleaseBudget(max_drop=1.0)
        assert budget_from_args(_parse(command, "--use-ci"), unset=ReleaseBudget(), optional=True) \
            == ReleaseBudget(use_ci=True)
        assert budget_from_args(_parse(command, "--min-embedding-cosine", "none"), unset=ReleaseBudget(),
                                optional=True) == ReleaseBudget(min_embedding_cosine=None)
    # gate: only the criteria given are checked
    assert budget_from_args(_parse("gate", "--max-drop", "1", "--use-ci")) == ReleaseBudget(
        max_drop=1.0, min_agreement=None, min_embedding_cosine=None, use_ci=True)
    # sensitivity: the options default to the search's budget; none leaves a criterion out
    assert budget_from_args(_parse("sensitivity", "--min-agreement", "none", "--min-embedding-cosine", "0.9")) \
        == ReleaseBudget(max_drop=0.5, min_agreement=None, min_embedding_cosine=0.9)
    assert not hasattr(_parse("sensitivity"), "use_ci")  # the search has no interval to check


def test_an_exact_node_name_with_a_comma_survives_the_pattern_lists():
    """Sensitivity's exclusions become exact patterns; one with a comma is a regex, kept whole by the CLI."""
    import re

    from calib.cli.common import split_patterns
    from calib.placement import exact_pattern

    pattern = exact_pattern("/attn/Concat,1")
    assert pattern.startswith("re:") and split_patterns(pattern) == (pattern,)
    assert re.fullmatch(pattern[len("re:"):], "/attn/Concat,1")
