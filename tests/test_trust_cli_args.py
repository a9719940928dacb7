"""Numeric options are checked (range and finiteness) before any work starts, with the
accepted range in a one-line message."""

from __future__ import annotations

import argparse

import pytest

from oasisvq.cli import args as A
from oasisvq.errors import ConfigError

CASES = {
    # validator: (accepted values and what they parse to, refused values, range in the message)
    A.size: ({"16": 16, "128": 128, "4096": 4096}, ["0", "8", "33", "-16", "8192", "1e2"], "multiple of 16"),
    A.batch_size: ({"1": 1, "64": 64}, ["0", "-1", "2.5", "nan", ""], "integer from 1 to 65536"),
    A.lr: ({"1e-3": 1e-3, "2": 2.0}, ["0", "-1e-3", "nan", "inf", "-inf", "x"], "finite number > 0"),
    A.codebook_size: ({"2": 2, "512": 512}, ["1", "0", "65537", "nan"], "from 2 to 65536"),
    A.epochs: ({"1": 1, "300": 300}, ["0", "-3", "1.5", "nan"], "integer >= 1"),
    A.count: ({"1": 1, "1000": 1000}, ["0", "-5", "inf"], "integer >= 1"),
    A.temperature: ({"0": 0.0, "0.7": 0.7, "2": 2.0}, ["nan", "-0.1", "inf"], "finite number >= 0"),
    A.top_k: ({"1": 1, "50": 50}, ["0", "-1", "nan"], "integer >= 1"),
    A.guidance: ({"0": 0.0, "1": 1.0, "3.5": 3.5}, ["nan", "-1", "inf", "101"], "from 0 to 100"),
    A.seed: ({"0": 0, "4294967295": 2**32 - 1}, ["-1", "4294967296", "1.5"], "from 0 to 4294967295"),
    A.workers: ({"0": 0, "8": 8}, ["-1", "257", "nan"], "from 0 to 256"),
    A.checkpoint_every: ({"0": 0, "500": 500}, ["-1", "nan", "1.5"], "integer >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("validate", list(CASES), ids=lambda f: f.__name__)
def test_accepted_and_refused_values(validate) -> None:
    good, bad, expected = CASES[validate]
    for text, value in good.items():
        parsed = validate(text)
        assert parsed == value and type(parsed) is type(value), text
    for text in bad:
        with pytest.raises(ConfigError) as err:
            validate(text)
        assert str(err.value) == f"{text}: expected {str(err.value).split('expected ', 1)[1]}"
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_argparse_prints_the_value_and_the_range(capsys) -> None:
    parser = argparse.ArgumentParser(prog="oasisvq train")
    parser.add_argument("--lr", type=A.lr)
    parser.add_argument("--epochs", type=A.epochs)
    assert parser.parse_args(["--lr", "3e-4", "--epochs", "2"]).epochs == 2
    for argv, message in (
        (["--lr", "nan"], "argument --lr: nan: expected a finite number > 0"),
        (["--epochs", "0"], "argument --epochs: 0: expected an integer >= 1"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_check_names_the_option_outside_argparse() -> None:
    assert A.check("--temperature", 0.5, A.temperature) == 0.5
    with pytest.raises(ConfigError, match=r"^--temperature nan: expected a finite number >= 0$"):
        A.check("--temperature", float("nan"), A.temperature)
