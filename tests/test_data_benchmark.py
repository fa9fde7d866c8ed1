"""The data benchmark script runs end to end (tiny sizes) and prints both tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_data.py"


def test_benchmark_script_quick_run(capfd):
    spec = importlib.util.spec_from_file_location("benchmark_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    for row in ("FLAC 16 kHz, folder", "FLAC 16 kHz, shards", "MP3 16 kHz", "MP3 44.1 kHz, shards",
                "LogMelFrontend CPU", "librosa melspectrogram", "AudioFolderDataset scan, 1000 files",
                "shard manifest, 1000 records"):
        assert row in out
    assert "files failed" not in out
    assert "part2_3_length" not in err  # the MP3 decoder's chatter is silenced
    for source in ("folder", "shards"):
        row = next(line for line in out.splitlines() if line.startswith(f"FLAC 16 kHz, {source}"))
        assert float(row.split()[4]) > 0  # clips/s
