"""Names never break a run: output names derived from long input names are shortened with a stable hash,
stay unique, and page titles show the relative path with control and bidirectional characters escaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_tokenize import SR, _checkpoint, evaluate_script, tokenize_script

from transcoder.evaluation.evaluate import example_title
from transcoder.utils.names import NAME_MAX_BYTES, display_name, fit_name, fit_relative


def test_fit_name_keeps_short_names_and_hashes_long_ones() -> None:
    assert fit_name("speaker1__utt", ".wav") == "speaker1__utt"
    long_a, long_b = "é" * 150 + "a", "é" * 150 + "b"  # 301 bytes each, the same first 300
    fitted_a, fitted_b = fit_name(long_a, "_vocoder_reconstruction.wav"), fit_name(long_b, "_x.wav")
    assert len((fitted_a + "_vocoder_reconstruction.wav").encode()) <= NAME_MAX_BYTES - 24
    assert fitted_a != fit_name(long_b, "_vocoder_reconstruction.wav")  # the hash keeps them apart
    assert fitted_a == fit_name(long_a, "_vocoder_reconstruction.wav")  # and is stable
    fitted_a.encode().decode()  # cut on a character boundary
    assert fitted_b.startswith("é" * 10)
    assert [len(part.encode()) <= 231 for part in fit_relative("d" * 300 + "/" + "f" * 300, ".mel.npy").split("/")]


def test_display_name_escapes_control_and_bidi_characters() -> None:
    assert display_name("spk1/a\u202egnp.wav") == "spk1/a\\u202egnp.wav"
    assert display_name("a\nb\x1b[31m\\") == "a\\x0ab\\x1b[31m\\\\"
    assert display_name("ordinary/naïve.flac") == "ordinary/naïve.flac"
    assert example_title("/data/x/spk1/a\u2066.wav", "/data/x", 1.0) == "spk1/a\\u2066.wav @ 1.00 s"


def test_evaluation_of_a_file_with_a_239_byte_name_writes_its_outputs(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    for speaker in ("spk1", "spk2"):
        (root / speaker).mkdir(parents=True)
        sf.write(root / speaker / ("n" * 235 + ".wav"), 0.1 * np.sin(np.arange(SR) / 7).astype(np.float32), SR)
    out = tmp_path / "eval"
    rc = evaluate_script.main([str(_checkpoint(tmp_path / "c.pt")), "--output", str(out), "--audio-dir", str(root),
                               "--num-audio", "2", "--num-workers", "0", "--metric-workers", "1", "--quiet",
                               "--device", "cpu", "--no-audio-metrics"])
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["windows"] > 0
    pngs = sorted((out / "examples").glob("*.png"))
    assert len(pngs) == 2 and all(len(p.name.encode()) <= NAME_MAX_BYTES for p in pngs)
    assert {p.stem[:10] for p in pngs} == {"000_spk1__", "001_spk2__"}
    assert all(len(p.stem.rsplit("-", 1)[1]) == 12 for p in pngs)  # shortened, with the full name's hash


def test_decode_of_an_utterance_with_a_long_id_writes_it(tmp_path: Path, ckpt: Path) -> None:
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / ("m" * 245 + ".wav"), np.zeros(SR // 2, np.float32), SR)
    codes = tmp_path / "codes"
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(root), str(codes), "--layout", "packed",
                                 "--num-workers", "0", "--quiet", "--device", "cpu"]) == 0
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes), str(tmp_path / "mel"), "--mel", "--quiet",
                                 "--device", "cpu"]) == 0
    written = list((tmp_path / "mel").glob("*.mel.npy"))
    assert len(written) == 1 and written[0].name.startswith("m" * 100)


@pytest.mark.parametrize("name", ["x" * 250])
def test_files_layout_writes_a_long_id(tmp_path: Path, ckpt: Path, name: str) -> None:
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / f"{name}.wav", np.zeros(SR // 2, np.float32), SR)
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(root), str(tmp_path / "codes"), "--layout", "files",
                                 "--num-workers", "0", "--quiet", "--device", "cpu"]) == 0
    assert (tmp_path / "codes" / f"{name}.npy").is_file()
