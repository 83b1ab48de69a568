"""The command line's flags: every default is the dataclass field it sets, stated in the help as it is."""

from __future__ import annotations

from dataclasses import fields

import pytest

from workbench.cli.commands import recipe_from_args, settings_from_args, spec_from_args
from workbench.cli.parser import STUDENT_FLAGS, build_parser, default
from workbench.recipe import DEFAULT_STUDENT_MINUTES, GenerationSettings, Recipe, StudentSpec


def parse(*argv):
    args = build_parser().parse_args(list(argv))
    args.argv = list(argv)
    return args


def test_no_flags_give_the_dataclasses_defaults():
    args = parse("generate", "--prompt", "hi")
    assert recipe_from_args(args) == Recipe()
    assert settings_from_args(args) == GenerationSettings()
    assert spec_from_args(parse("distill")) == StudentSpec()


def test_every_student_field_but_the_hidden_loss_has_a_flag_whose_help_states_its_default():
    help_text = build_parser()._subparsers._group_actions[0].choices["distill"].format_help()
    flat = " ".join(help_text.split())
    assert set(STUDENT_FLAGS) == {f.name for f in fields(StudentSpec)} - {"hidden_weight"}
    for field, (flag, *_rest) in STUDENT_FLAGS.items():
        assert flag in flat
        value = default(StudentSpec, field)
        assert f"(default {value:g})" in flat if isinstance(value, (int, float)) else f"(default {value})" in flat, field
    assert f"(default {DEFAULT_STUDENT_MINUTES:g})" in flat and "--minutes M" in flat


@pytest.mark.parametrize("command, tokens", [("generate", default(GenerationSettings, "max_new_tokens")),
                                             ("bench", 128)])
def test_max_new_tokens_default_per_command(command, tokens):
    args = parse(command, "--prompt", "hi") if command == "generate" else parse(command)
    assert settings_from_args(args).max_new_tokens == tokens
    assert settings_from_args(args).ignore_eos == (command == "bench")


def test_student_flags_set_their_fields():
    spec = spec_from_args(parse("distill", "--layers-ratio", "0.5", "--train-batch-size", "2", "--lr", "0.001"))
    assert (spec.layers_ratio, spec.batch_size, spec.lr) == (0.5, 2, 0.001)
