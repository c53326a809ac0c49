"""Container limits: the Python API checks them by the rules of the command line's options."""

from __future__ import annotations

from typing import Any

import pytest

import layerdiff
from layerdiff.cgroups import Limits, parse_cpus, parse_memory
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"cpus": 0}, "number of CPUs out of range: 0"),
        ({"cpus": 0.001}, "number of CPUs out of range: 0.001"),
        ({"cpus": 1025}, "number of CPUs out of range: 1025"),
        ({"cpus": float("nan")}, "number of CPUs out of range: nan"),
        ({"cpus": "2"}, "number of CPUs must be a number, not '2'"),
        ({"cpus": True}, "number of CPUs must be a number, not True"),
        ({"memory": -1}, "memory limit -1 is below the minimum of 6m"),
        ({"memory": 0}, "memory limit 0 is below the minimum of 6m"),
        ({"memory": (6 << 20) - 1}, "memory limit 6291455 is below the minimum of 6m"),
        ({"memory": 64e6}, "memory limit must be a number of bytes, not 64000000.0"),
        ({"pids": 0}, "process-count limit 0 is below the minimum of 1"),
        ({"pids": -5}, "process-count limit -5 is below the minimum of 1"),
        ({"pids": 2.5}, "process-count limit must be a whole number, not 2.5"),
    ],
)
def test_limits_out_of_range_are_refused(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(layerdiff.InvalidArgumentError) as info:
        Limits(**limits)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError) and isinstance(info.value, layerdiff.LayerdiffError)


def test_limits_in_range_are_kept() -> None:
    assert Limits(memory=6 << 20, cpus=0.01, pids=1) == Limits(memory=6291456, cpus=0.01, pids=1)
    assert Limits(cpus=1024).cpus == 1024
    assert not Limits().any


@pytest.mark.parametrize(
    ("option", "value"), [("--cpus", "0"), ("--memory", "-1"), ("--pids-limit", "0")]
)
def test_the_command_line_refuses_the_same(option: str, value: str) -> None:
    proc = run_cli("run", "--rm", f"{option}={value}", "any:1", "--", "true")
    # 125, as every failure of run before the command starts: the command's own could be 2.
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1, proc.stderr
    assert option in proc.stderr


def test_parsed_limits_are_accepted() -> None:
    assert Limits(memory=parse_memory("6m"), cpus=parse_cpus("0.01")).memory == 6 << 20
    with pytest.raises(layerdiff.InvalidArgumentError, match="below the minimum of 6m"):
        parse_memory("5m")
