"""Mozilla Common Voice (Ardila et al., 2020): ``clips/*.mp3`` listed by per-split TSV files."""

from __future__ import annotations

import csv
import os
from typing import Any

from transcoder.data.base import AudioClipDataset

__all__ = ["CommonVoiceDataset"]

#: Columns the dataset needs; a release's other columns (up_votes, age, accents, ...) are ignored.
REQUIRED_COLUMNS = ("client_id", "path", "sentence")

_LAYOUT = ("Expected Common Voice layout (one language folder of a release, e.g. cv-corpus-17.0/en): "
           "<root>/clips/*.mp3 and <root>/<split>.tsv (train, dev, test, validated, ...) with the header "
           "'client_id path sentence up_votes down_votes age gender accents locale segment'.")


class CommonVoiceDataset(AudioClipDataset):
    """Clips of one Common Voice split, sorted by clip path.

    Args:
        root: the language folder holding ``clips/`` and the ``<split>.tsv`` files.
        split: TSV name without extension (``train``, ``dev``, ``test``, ``validated``, ...).
        sample_rate, clip_samples, mode, file_list_cache, max_fallback: see :class:`AudioClipDataset`.

    :meth:`metadata` gives ``sentence`` and ``client_id`` (str). Clips are not checked for existence up
    front (that would stat every file); a missing clip is skipped like any unreadable file.
    """

    metadata_keys = ("sentence", "client_id")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        sample_rate: int = 16000,
        clip_samples: int = 163840,
        mode: str = "train",
        file_list_cache: str | None = None,
        max_fallback: int = 32,
    ) -> None:
        self.root = str(root)
        self.split = split
        self.tsv_path = os.path.join(self.root, f"{split}.tsv")
        if not os.path.isdir(os.path.join(self.root, "clips")):
            raise FileNotFoundError(f"CommonVoiceDataset: no 'clips' folder in '{self.root}'. {_LAYOUT}")
        if not os.path.isfile(self.tsv_path):
            found = sorted(n[:-4] for n in os.listdir(self.root) if n.endswith(".tsv"))
            raise FileNotFoundError(f"CommonVoiceDataset: split file '{self.tsv_path}' not found "
                                    f"(splits present: {found}). {_LAYOUT}")
        super().__init__(sample_rate=sample_rate, clip_samples=clip_samples, mode=mode,
                         file_list_cache=file_list_cache, max_fallback=max_fallback)

    def _signature(self) -> dict[str, Any]:
        return {"root": os.path.abspath(self.root), "split": self.split,
                "tsv_mtime_ns": os.stat(self.tsv_path).st_mtime_ns}

    def layout_help(self) -> str:
        return f"'{self.tsv_path}' lists no clips. {_LAYOUT}"

    def _scan(self) -> dict[str, list[Any]]:
        rows: list[tuple[str, str, str]] = []
        with open(self.tsv_path, encoding="utf-8-sig", newline="") as fh:
            # Sentences contain quotes; Common Voice TSVs are not quoted.
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                return {"path": [], "sentence": [], "client_id": []}
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"CommonVoiceDataset: '{self.tsv_path}' lacks required column(s) {missing}; "
                                 f"its header is {header}, expected at least {list(REQUIRED_COLUMNS)}")
            col = {name: header.index(name) for name in REQUIRED_COLUMNS}
            for line_no, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) <= max(col.values()):
                    raise ValueError(f"CommonVoiceDataset: '{self.tsv_path}' line {line_no} has {len(fields)} "
                                     f"fields, header has {len(header)}: {fields!r}")
                name = fields[col["path"]]
                if not os.path.splitext(name)[1]:
                    name += ".mp3"  # early releases list clip names without the extension
                rows.append((f"clips/{name}", fields[col["sentence"]], fields[col["client_id"]]))
        rows.sort()
        return {"path": [r[0] for r in rows], "sentence": [r[1] for r in rows], "client_id": [r[2] for r in rows]}
