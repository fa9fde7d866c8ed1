"""Lhotse manifests (Żelasko et al., 2021; k2/icefall, NeMo) as a dataset: every corpus ``lhotse prepare`` knows.

``lhotse prepare librispeech|libritts|audioset|musan|commonvoice|...`` writes RecordingSet and
SupervisionSet manifests (``*.jsonl.gz``); ``lhotse cut simple`` combines them into a CutSet. This
dataset reads either form with Lhotse's own loader, keeps what it needs per cut (source file,
first frame, frame count, ids, text) and then decodes with this repo's reader
(:class:`~transcoder.data.audio_io.AudioFile`: soxr resampling, the same failure handling as the
other datasets). Lhotse is therefore needed to build the dataset, not to read audio.

Supported cuts: a ``MonoCut``/``MultiCut`` whose recording has one ``file`` source (channels are
mixed to mono) and no transforms. Other cuts (URL/command/memory sources, several files per
recording, speed-perturbed recordings, mixed or padding cuts) are left out of the listing with one
warning that counts them by reason.

Lhotse is an optional extra: ``pip install -e ".[lhotse]"``. Without it, building this dataset
raises :class:`MissingExtraError` saying so.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

from transcoder.data.audio_io import AudioDecodeError, AudioFile
from transcoder.data.base import AudioClipDataset

__all__ = ["LhotseCutsDataset", "MissingExtraError", "require_lhotse"]

INSTALL_HINT = 'pip install -e ".[lhotse]" (or pip install lhotse)'


class MissingExtraError(ImportError, ValueError):
    """An optional dependency a config asks for is not installed (a ValueError too, so config checks report it)."""


def require_lhotse(what: str) -> Any:
    """Import and return ``lhotse``, or raise :class:`MissingExtraError` naming ``what`` needs it."""
    try:
        import lhotse
    except ImportError as err:
        raise MissingExtraError(f"{what} needs the optional 'lhotse' extra, which is not installed: "
                                f"{INSTALL_HINT}") from err
    return lhotse


class LhotseCutsDataset(AudioClipDataset):
    """Cuts of a Lhotse CutSet, or of recordings + supervisions manifests, as fixed-length clips.

    Args:
        cuts: CutSet manifest(s) (``cuts.jsonl.gz``), one path or a list; or leave None and give
        recordings: a RecordingSet manifest (``*_recordings_*.jsonl.gz``), and optionally
        supervisions: the matching SupervisionSet manifest.
        per_supervision: with supervisions, one item per supervision segment (an utterance of a long
            recording); False: one item per cut (a whole recording, e.g. music or AudioSet clips).
        audio_root: folder that relative source paths are relative to (default: the current folder,
            as Lhotse resolves them).
        sample_rate, clip_samples, mode, max_fallback: see :class:`AudioClipDataset`.

    Items carry ``cut_id``, ``recording_id``, ``speaker`` and ``text`` (``""`` when absent; the first
    supervision's). ``offset`` counts from the cut's start.
    """

    metadata_keys = ("cut_id", "recording_id", "speaker", "text")
    hidden_keys = ("segment_start", "segment_frames", "segment_rate")

    def __init__(
        self,
        cuts: str | Sequence[str] | None = None,
        recordings: str | None = None,
        supervisions: str | None = None,
        *,
        per_supervision: bool = True,
        audio_root: str | None = None,
        sample_rate: int = 16000,
        clip_samples: int = 163840,
        mode: str = "train",
        max_fallback: int = 32,
    ) -> None:
        self._lhotse = require_lhotse("transcoder.data.LhotseCutsDataset")
        if (cuts is None) == (recordings is None):
            raise ValueError("LhotseCutsDataset: give either cuts (a CutSet manifest) or recordings (a RecordingSet "
                             f"manifest, optionally with supervisions); got cuts={cuts!r}, recordings={recordings!r}")
        if supervisions is not None and recordings is None:
            raise ValueError("LhotseCutsDataset: supervisions needs recordings (cuts already hold their supervisions)")
        self.cut_files = ([cuts] if isinstance(cuts, str) else list(cuts)) if cuts is not None else []
        self.recordings, self.supervisions = recordings, supervisions
        for key, file in [*(("cuts", f) for f in self.cut_files), ("recordings", recordings),
                          ("supervisions", supervisions)]:
            if file is not None and not os.path.isfile(file):
                raise FileNotFoundError(f"LhotseCutsDataset: {key}={file!r} is not a file. {self.layout_help()}")
        self.per_supervision = bool(per_supervision)
        self.audio_root = os.path.abspath(audio_root or os.getcwd())
        first = self.cut_files[0] if self.cut_files else recordings
        self.root = os.path.dirname(os.path.abspath(str(first)))
        super().__init__(sample_rate=sample_rate, clip_samples=clip_samples, mode=mode, max_fallback=max_fallback)

    def path(self, file_index: int) -> str:
        return self._paths[file_index]  # stored absolute

    def _signature(self) -> dict[str, Any]:
        return {"cuts": self.cut_files, "recordings": self.recordings, "supervisions": self.supervisions,
                "per_supervision": self.per_supervision, "audio_root": self.audio_root}

    def layout_help(self) -> str:
        return ("Expected Lhotse manifests, e.g. from `lhotse prepare librispeech <corpus> <out>`: "
                "cuts=<out>/librispeech_cuts_train-clean-100.jsonl.gz, or recordings=..._recordings_....jsonl.gz "
                "with supervisions=..._supervisions_....jsonl.gz.")

    def _cutset(self) -> Any:
        lhotse = self._lhotse
        if self.cut_files:
            sets = [lhotse.load_manifest_lazy(f) or lhotse.load_manifest(f) for f in self.cut_files]
            cuts = sets[0] if len(sets) == 1 else lhotse.CutSet.from_cuts(c for s in sets for c in s)
        else:
            recordings = lhotse.load_manifest_lazy(self.recordings) or lhotse.load_manifest(self.recordings)
            supervisions = None
            if self.supervisions is not None:
                supervisions = lhotse.load_manifest_lazy(self.supervisions) or lhotse.load_manifest(self.supervisions)
            cuts = lhotse.CutSet.from_manifests(recordings=recordings.to_eager(),
                                                supervisions=supervisions.to_eager() if supervisions else None)
        if not isinstance(cuts, lhotse.CutSet):
            raise ValueError(f"LhotseCutsDataset: {self.cut_files or self.recordings} holds a "
                             f"{type(cuts).__name__}, not a CutSet. {self.layout_help()}")
        if self.per_supervision:
            cuts = cuts.filter(self._count_unsupervised).trim_to_supervisions(keep_overlapping=False)
        return cuts

    def _count_unsupervised(self, cut: Any) -> bool:
        """Filter for ``per_supervision``: keeps cuts with supervisions, counts the others."""
        if len(cut.supervisions) > 0:
            return True
        self._unsupervised += 1
        return False

    def _scan(self) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {"path": [], **{k: [] for k in (*self.metadata_keys, *self.hidden_keys)}}
        to_samples = self._lhotse.utils.compute_num_samples
        left_out: Counter[str] = Counter()
        examples: dict[str, str] = {}
        self._unsupervised = 0
        for cut in self._cutset():
            reason = _unsupported(cut)
            if reason is not None:
                left_out[reason] += 1
                examples.setdefault(reason, cut.id)
                continue
            recording = cut.recording
            rate = int(recording.sampling_rate)
            source = recording.sources[0].source
            columns["path"].append(os.path.normpath(os.path.join(self.audio_root, source)))
            # Lhotse's own seconds -> samples rounding (half up), so a cut is the samples Lhotse would load.
            columns["segment_start"].append(to_samples(cut.start, rate))
            columns["segment_frames"].append(max(1, to_samples(cut.duration, rate)))
            columns["segment_rate"].append(rate)
            supervision = cut.supervisions[0] if cut.supervisions else None
            columns["cut_id"].append(str(cut.id))
            columns["recording_id"].append(str(recording.id))
            columns["speaker"].append(str(getattr(supervision, "speaker", None) or ""))
            columns["text"].append(str(getattr(supervision, "text", None) or ""))
        if left_out:
            warnings.warn(f"LhotseCutsDataset: left out {sum(left_out.values())} cut(s) this reader does not support: "
                          + "; ".join(f"{n} {r} (e.g. {examples[r]})" for r, n in left_out.items()), stacklevel=3)
        if self._unsupervised:
            note = (f"{self._unsupervised} cut(s) of {self.cut_files or self.recordings} have no supervision and are "
                    "left out under per_supervision: true (the default: one item per supervision segment); "
                    "per_supervision: false uses whole cuts")
            if not columns["path"]:
                raise FileNotFoundError(f"LhotseCutsDataset: no items: {note}")
            warnings.warn(f"LhotseCutsDataset: {note}", stacklevel=3)
        return columns

    def open_audio(self, file_index: int) -> AudioFile:
        """The cut's segment of its source file (frames rescaled when the file's rate is not the manifest's)."""
        path = self.path(file_index)
        start, frames = self._column("segment_start", file_index), self._column("segment_frames", file_index)
        rate = self._column("segment_rate", file_index)
        try:
            f = AudioFile(path, segment=(start, frames))
            if f.info.sample_rate != rate:
                f.close()
                real = f.info.sample_rate
                f = AudioFile(path, segment=(start * real // rate, max(1, frames * real // rate)))
        except AudioDecodeError as err:
            if err.reason.startswith("segment"):
                raise AudioDecodeError(f"{path} (cut {self._column('cut_id', file_index)})", err.reason) from None
            raise
        return f




def _unsupported(cut: Any) -> str | None:
    """Why this reader cannot read ``cut`` (a short reason used to count them), or None."""
    recording = getattr(cut, "recording", None)
    if recording is None:
        return f"{type(cut).__name__}s (mixed/padding cuts or cuts without a recording)"
    sources = recording.sources
    if len(sources) != 1:
        return "recordings with several sources"
    if sources[0].type != "file":
        return f"recordings with a '{sources[0].type}' source (only 'file' is read)"
    if getattr(recording, "transforms", None):
        return "recordings with transforms (e.g. speed perturbation)"
    return None
