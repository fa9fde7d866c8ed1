"""Bounded errors: YAML aliases that expand beyond a size limit are refused at once (in a config file and in a
command-line override), and no config error renders an unbounded value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from transcoder.training.config import load_config
from transcoder.utils.targets import ConfigError, bounded_repr

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
BOMB = """\
a: &a [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_in_a_config_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(f"base: {DEMO}\n{BOMB.replace('a: &a', 'x: &a')}optimizer:\n  betas: *i\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^{path}: its YAML aliases expand to more than 100000 values") as info:
        load_config(path)
    assert time.perf_counter() - started < 5 and len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_an_alias_bomb_in_an_override_is_refused() -> None:
    bomb = "[" + ",".join(["&a [1,1,1,1,1,1,1,1,1,1]"] + ["*a"] * 9) + "]"
    nested = bomb
    for level in range(5):
        nested = f"[&l{level} {nested}" + f", *l{level}" * 9 + "]"
    with pytest.raises(ConfigError, match="YAML aliases expand to more than"):
        load_config(DEMO, [f"optimizer.betas={nested}"])


def test_a_huge_value_is_rendered_truncated() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["optimizer.betas=[" + ",".join(["0.5"] * 50_000) + "]"])
    message = str(info.value)
    assert "betas" in message and len(message) < 1200 and "characters cut" in message
    assert len(bounded_repr(list(range(10**6)))) <= 300 + len("...(truncated)")
    assert bounded_repr({"k": "v"}) == "{'k': 'v'}"
