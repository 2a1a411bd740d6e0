"""Every family member has an example YAML, and every example validates into a buildable adapter config."""

from __future__ import annotations

from pathlib import Path

import pytest

import lorafam as lf
from lorafam.train.build import adapter_config
from lorafam.train.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_every_member_has_an_example():
    missing = sorted(set(lf.MEMBERS) - {p.stem for p in FILES})
    assert not missing, f"add examples/<member>.yaml for: {missing} (see examples/README.md)"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_example_validates(path):
    cfg = load_config(path)
    acfg = adapter_config(cfg)
    assert type(acfg).method == lf.MEMBERS[cfg.member if not cfg.use_dora else "dora"].method
    assert cfg.dataset, "examples must name a dataset"
