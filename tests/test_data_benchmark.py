"""The data benchmark script runs end to end (tiny sizes) and prints both tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_data.py"


def test_benchmark_script_quick_run(capsys):
    spec = importlib.util.spec_from_file_location("benchmark_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for row in ("FLAC 16 kHz", "MP3 16 kHz", "MP3 44.1 kHz", "LogMelFrontend CPU", "librosa melspectrogram"):
        assert row in out
    assert "files failed" not in out
    flac_row = next(line for line in out.splitlines() if line.startswith("FLAC 16 kHz"))
    assert float(flac_row.split()[3]) > 0  # clips/s
