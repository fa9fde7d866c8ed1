"""scripts/benchmark_peers.py on its cheap rows (the CPU preset in PyTorch and ONNX Runtime, one process each):
a row per model with its size, bit/s, speeds and memory, the machine and load, JSON + Markdown; and the
library never imports transformers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_tokenize import REPO


def _script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as module ``name`` (registered first: its dataclass looks itself up there)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


peers = _script("benchmark_peers")


def test_the_speech_is_10_24_seconds_at_each_rate() -> None:
    assert peers.speech(16000).shape == (163840,)
    assert peers.speech(24000).shape == (245760,)


def test_cpu_preset_rows_in_both_backends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert peers.main(["--rows", "cpu-preset,cpu-preset-onnx", "--repeats", "1", "--min-seconds", "0",
                       "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "CUDA bf16 rows: skipped (no CUDA device on this machine)" in printed or "cuda" in printed
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["threads"] == 1 and report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert len(report["load_average_before"]) == 3 and report["failed"] == []
    assert "never quality" in report["weights"]
    cpu_rows = [r for r in report["rows"] if r["device"] == "cpu"]
    assert [r["row"] for r in cpu_rows] == ["cpu-preset", "cpu-preset-onnx"]
    for row in cpu_rows:
        assert 2.5e6 < row["params"] < 3.5e6 and row["bits_per_second"] == 900.0 and row["audio_seconds"] == 10.24
        assert row["encode_rtf"] > 1 and row["decode_rtf"] > 1 and row["decodes_to"] == "mel"
        assert math.isclose(row["encode_rtf"], 10.24 / row["encode_seconds"])
        assert row["peak_rss_mib"] > 50 and (row["rss_above_imports_mib"] is None or row["rss_above_imports_mib"] >= 0)
    assert cpu_rows[0]["params"] == cpu_rows[1]["params"]  # the same weights
    table = (tmp_path / "results.md").read_text()
    assert "| audio-bsq-vit CPU preset (ONNX Runtime) | cpu fp32, 1 thread(s) | 2.8 | 900 |" in table


def test_unknown_rows_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        peers.main(["--rows", "opus", "--output", "x"])
    assert "--rows: unknown ['opus']" in capsys.readouterr().err


def test_the_library_never_imports_transformers() -> None:
    code = ("import sys, transcoder.api, transcoder.release.export, transcoder.release.onnx_backend, "
            "transcoder.release.hub; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "False"
    sources = "\n".join(p.read_text() for p in (REPO / "transcoder").rglob("*.py"))
    assert "import transformers" not in sources and "from transformers" not in sources
