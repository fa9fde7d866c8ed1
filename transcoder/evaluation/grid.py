"""Resumable comparison grids: variants written ``NAME:KEY=VALUE,...``, seeds, and a JSON-lines results file.

A grid is a list of variants, each a name and the config overrides it applies (``optimizer.lr=2e-3,...``; values
are YAML, commas inside brackets or braces belong to the value). It runs once per seed, and every finished
(variant, seed) appends its rows to the results file at once (:func:`append_results`, fsynced), so a stopped grid
loses at most the run in flight; :func:`pending_runs` lists what a rerun still has to do and refuses a name reused
with other overrides. ``scripts/benchmark_quality.py`` drives it (``--grid``, ``--variant``, ``--seeds``,
``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from transcoder.evaluation.evaluate import finite_or_none

__all__ = ["append_results", "parse_seeds", "parse_variant", "pending_runs", "read_grid_file", "read_results",
           "run_folder_name", "split_overrides"]


def split_overrides(text: str) -> list[str]:
    """``a=1,b=[1,2],c=x`` → ``["a=1", "b=[1,2]", "c=x"]`` (commas inside brackets or braces are kept)."""
    items, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE,...`` (or ``NAME`` / ``NAME:``, no overrides) → (name, overrides)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE with NAME made of letters, digits, "
                         "'-', '_' or '.'")
    overrides = split_overrides(rest)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--variant {text!r}: override {override!r} is not KEY=VALUE")
    return name, overrides


def run_folder_name(name: str, seed: int | None, seeds: list[int] | None) -> str:
    """``NAME`` for the first (or only) seed, ``NAME_s<seed>`` for the others."""
    return name if seed is None or not seeds or seed == seeds[0] else f"{name}_s{seed}"


def read_grid_file(path: str) -> list[str]:
    """The ``NAME:KEY=VALUE,...`` lines of a grid file (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"--grid {path}: cannot read it ({err.strerror or err})") from err
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file (JSON lines); a torn last line (a run killed mid-write) is dropped with a warning."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                print(f"warning: {path}:{number}: incomplete last line dropped ({err.msg})", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number}: not a JSON row ({err.msg}); fix or remove the line") from err
    return rows


def append_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines and fsync, so a finished variant survives a crash of the next one."""
    text = "".join(json.dumps(finite_or_none(row), allow_nan=False, default=float) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def pending_runs(variants: list[tuple[str, list[str]]], seeds: list[int] | None,
                 done: list[dict[str, Any]]) -> list[tuple[str, list[str], int | None]]:
    """The (name, overrides, seed) runs without rows in ``done``; a name whose rows have other overrides raises."""
    finished: dict[tuple[str, int], list[str]] = {}
    for row in done:
        finished[(row["variant"], int(row.get("seed") or 0))] = list(row.get("overrides") or [])
    runs = []
    for name, overrides in variants:
        for seed in seeds or [None]:
            key = (name, 0 if seed is None else seed)
            if key in finished:
                if finished[key] != overrides:
                    raise ValueError(f"variant {name!r} (seed {key[1]}) is in the results file with overrides "
                                     f"{finished[key]}, not {overrides}: give the new variant another name")
                continue
            runs.append((name, overrides, seed))
    return runs


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` → ``[0, 1]`` (argparse type; distinct integers)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct integers separated by commas")
    return seeds
