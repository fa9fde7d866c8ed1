"""Common Voice TSV quirks seen in real releases: a UTF-8 byte-order mark before the header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from transcoder.data import CommonVoiceDataset

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"


def test_tsv_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    row = "abc\ta.wav\tHello there\t2\t0\t\t\t\ten\t\n"
    (tmp_path / "train.tsv").write_text(HEADER + row, encoding="utf-8-sig")
    dataset = CommonVoiceDataset(str(tmp_path), split="train", sample_rate=16000, clip_samples=8000, mode="train")
    item = dataset[(0, 1)]
    meta = dataset.metadata(item["file_index"])
    assert len(dataset) == 1 and meta["sentence"] == "Hello there" and meta["client_id"] == "abc"
