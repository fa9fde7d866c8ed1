"""Perceptual and intelligibility metrics of rendered speech: DNSMOS and (d)WER, from the ``eval`` extra.

* **DNSMOS** (Reddy et al., "DNSMOS P.835", ICASSP 2022; the P.808 model of Reddy et al., 2021): a
  non-intrusive MOS predictor, no reference needed. Scored with Microsoft's ONNX models as shipped by the
  ``speechmos`` package on ``onnxruntime``: ``sig`` (speech signal), ``bak`` (background), ``ovrl``
  (overall) of P.835 and ``p808`` (overall, P.808). All lie on a 1-5 scale; clean read speech scores
  about 3.3 / 4.0 / 3.0 / 3.9.
* **dWER**: the word error rate of an ASR system's transcript of the decoded audio against ITS OWN
  transcript of the original (no reference transcripts needed; the original scores 0 by construction).
  The recogniser is CMU PocketSphinx with the US-English model inside the ``pocketsphinx`` wheel, so dWER
  is only computed for English material (``language="en"``) and skipped with a note otherwise. With
  reference transcripts (LibriSpeech layout, item key ``transcript``) the plain WER against them is also
  reported. Word error rates come from ``jiwer`` after lower-casing and stripping punctuation.

Scoring is per **file**: the evaluation's consecutive windows of a file are concatenated (in offset order)
for the original and for every rendering, so the recogniser sees whole utterances, not 2.56-s cuts.
Install with ``pip install -e ".[eval]"``; without it :func:`require_eval_extra` raises
:class:`MissingExtraError` with a one-line message naming the extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transcoder.evaluation.asr_guard import LanguagePlan, asr_reliability, parse_languages, reliability_note
from transcoder.utils.messages import warn_once
from transcoder.utils.progress import progress

__all__ = ["EVAL_EXTRA_PACKAGES", "DNSMOS_KEYS", "MissingExtraError", "require_eval_extra", "DNSMOSScorer",
           "SpeechRecognizer", "normalize_text", "word_error_rate", "transcript_of", "PerceptualScorer"]

#: Import names of the packages of the ``eval`` extra.
EVAL_EXTRA_PACKAGES = ("onnxruntime", "speechmos", "pocketsphinx", "jiwer")
#: The four DNSMOS scores, in the order the tables print them.
DNSMOS_KEYS = ("sig", "bak", "ovrl", "p808")
#: Sample rate the DNSMOS models and the PocketSphinx acoustic model expect.
MODEL_SAMPLE_RATE = 16000


class MissingExtraError(RuntimeError):
    """The optional ``eval`` extra (onnxruntime, speechmos, pocketsphinx, jiwer) is not installed."""


def require_eval_extra() -> None:
    """Raise :class:`MissingExtraError` (one line, naming the extra) when a package of it is missing."""
    missing = [name for name in EVAL_EXTRA_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"perceptual metrics (DNSMOS, dWER) need the optional extra 'eval' "
                                f"(missing: {', '.join(missing)}): pip install -e \".[eval]\"")


def _to_model_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 audio at 16 kHz, clipped to [-1, 1] (DNSMOS rejects samples outside it)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != MODEL_SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sample_rate, MODEL_SAMPLE_RATE).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


class DNSMOSScorer:
    """DNSMOS P.835 (SIG / BAK / OVRL) and P.808 of one clip, with single-threaded ONNX sessions.

    Clips shorter than the models' 9.01 s input are repeated to that length (as the reference
    implementation does); longer ones are scored on 1-s hops and averaged.
    """

    def __init__(self, threads: int = 1) -> None:
        require_eval_extra()
        import os

        import onnxruntime as ort
        from speechmos import dnsmos

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        models = os.path.join(os.path.dirname(dnsmos.__file__), "dnsmos_models")
        model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)  # its __init__ opens sessions with every core
        model.primary_model_path = os.path.join(models, "sig_bak_ovr.onnx")
        model.onnx_sess = ort.InferenceSession(model.primary_model_path, options, providers=["CPUExecutionProvider"])
        model.p808_onnx_sess = ort.InferenceSession(os.path.join(models, "model_v8.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self._model = model

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """``audio (S,)`` → ``{"sig", "bak", "ovrl", "p808"}`` (NaN for an empty or silent clip)."""
        audio = _to_model_rate(audio, sample_rate)
        if audio.size == 0 or not np.any(audio):
            return {key: float("nan") for key in DNSMOS_KEYS}
        scores = self._model(audio, MODEL_SAMPLE_RATE, False)
        return {key: float(scores[f"{key}_mos"]) for key in DNSMOS_KEYS}


class SpeechRecognizer:
    """CMU PocketSphinx (US-English acoustic model, dictionary and language model from the wheel)."""

    def __init__(self) -> None:
        require_eval_extra()
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=MODEL_SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        """``audio (S,)`` float in [-1, 1] → the recognised words, lower case ("" for nothing recognised)."""
        pcm = (_to_model_rate(audio, sample_rate) * 32767.0).round().astype(np.int16)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return normalize_text(hyp.hypstr if hyp is not None else "")


def normalize_text(text: str) -> str:
    """Lower case, punctuation (except in-word apostrophes) removed, whitespace collapsed."""
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower())
    return " ".join(text.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict[str, float | int]:
    """Corpus WER (substitutions + deletions + insertions over reference words, via ``jiwer``).

    Pairs whose (normalised) reference is empty have no words to score and are left out (counted in
    ``empty_references``); with no scorable pair the WER is NaN.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses, strict=True)]
    scored = [(r, h) for r, h in pairs if r]
    result: dict[str, float | int] = {"wer": float("nan"), "words": 0, "substitutions": 0, "deletions": 0,
                                      "insertions": 0, "utterances": len(scored),
                                      "empty_references": len(pairs) - len(scored)}
    if not scored:
        return result
    out = jiwer.process_words([r for r, _ in scored], [h for _, h in scored])
    words = out.substitutions + out.deletions + out.hits
    result.update(wer=(out.substitutions + out.deletions + out.insertions) / words, words=words,
                  substitutions=out.substitutions, deletions=out.deletions, insertions=out.insertions)
    return result


def transcript_of(dataset: Any, file_index: int) -> str | None:
    """The reference transcript of file ``file_index`` when the dataset has one (LibriSpeech layout), else None.

    Eval-mode items carry no metadata; datasets expose it per file through ``metadata(file_index)``.
    """
    if "transcript" not in getattr(dataset, "metadata_keys", ()):
        return None
    return dataset.metadata(int(file_index)).get("transcript") or None


_MODELS: dict[str, Any] = {}
_ORIGINAL_CACHE: dict[tuple[str, str], Any] = {}  # (metric, sha1 of the audio) → score / transcript


def _shared(name: str) -> Any:
    """One DNSMOS scorer / recogniser per process (loading PocketSphinx takes seconds)."""
    if name not in _MODELS:
        _MODELS[name] = DNSMOSScorer() if name == "dnsmos" else SpeechRecognizer()
    return _MODELS[name]


@dataclass
class _FileAudio:
    windows: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (offset, audio)
    transcript: str | None = None

    def joined(self) -> np.ndarray:
        return np.concatenate([audio for _, audio in sorted(self.windows, key=lambda w: w[0])])


class PerceptualScorer:
    """Collect the windows of each file for the original and every rendering, then score per file.

    Args:
        sample_rate: of the audio passed to :meth:`add`.
        language: the material's language: ``"en"``, per source ``"fr_voice=fr,en_voice=en"``, or a
            :class:`~transcoder.evaluation.asr_guard.LanguagePlan`. dWER / WER are computed for English sources
            only (for none: a note).
        dnsmos: also score DNSMOS.
        ceiling: the rendering that is the Griffin-Lim ceiling (true mel rendered); its dWER per source decides
            whether the source's dWER / WER are reliable (:mod:`transcoder.evaluation.asr_guard`).
        show_progress: a progress bar per phase (DNSMOS, recognition) on stderr.

    Use: :meth:`add` every window (``rendering="original"`` for the input audio, any other name for a
    rendering), then :meth:`compute`. The original's transcript and DNSMOS are cached per process by the
    audio's hash, so scoring many checkpoints on the same data recognises the originals once. After
    :meth:`compute`, :attr:`reliability` holds the per-source verdict.
    """

    def __init__(self, sample_rate: int, language: str | LanguagePlan | None = None, dnsmos: bool = True,
                 ceiling: str | None = None, show_progress: bool = False) -> None:
        require_eval_extra()
        self.sample_rate = sample_rate
        self.languages = parse_languages(language)
        self.language = self.languages.describe() if language else None
        self.dnsmos = dnsmos
        self.ceiling = ceiling
        self.show_progress = show_progress
        self.reliability: dict[str, dict[str, Any]] = {}
        self._files: dict[str, dict[str, _FileAudio]] = defaultdict(dict)  # rendering → path → windows
        self._order: list[str] = []
        self._source: dict[str, str] = {}  # path → source

    @property
    def asr_enabled(self) -> bool:
        """Whether any source is declared English (the recogniser runs on those only)."""
        return self.languages.any_english

    def add(self, rendering: str, path: str, offset: int, audio: np.ndarray, transcript: str | None = None,
            source: str | None = None) -> None:
        """One window ``audio (S,)`` (valid samples only) of file ``path`` (of ``source``: a top-level folder or
        speaker, default ``"all"``) starting at sample ``offset``."""
        if rendering not in self._files:
            self._order.append(rendering)
        entry = self._files[rendering].setdefault(path, _FileAudio())
        entry.windows.append((int(offset), np.asarray(audio, dtype=np.float32)))
        if transcript is not None:
            entry.transcript = transcript
        if source is not None or path not in self._source:
            self._source[path] = source or "all"

    def _cached(self, metric: str, audio: np.ndarray, fn: Any) -> Any:
        key = (metric, hashlib.sha1(audio.tobytes()).hexdigest())
        if key not in _ORIGINAL_CACHE:
            _ORIGINAL_CACHE[key] = fn(audio)
        return _ORIGINAL_CACHE[key]

    def _audio(self, rendering: str, path: str, originals: dict[str, np.ndarray]) -> np.ndarray:
        return originals[path] if rendering == "original" else self._files[rendering][path].joined()

    def _dnsmos_scores(self, originals: dict[str, np.ndarray]) -> dict[tuple[str, str], dict[str, float]]:
        """``(rendering, path) → DNSMOS`` for every file of every rendering, with a progress bar."""
        dns = _shared("dnsmos")
        jobs = [(rendering, path) for rendering in self._order for path in self._files[rendering]]
        out = {}
        for rendering, path in progress(jobs, desc="DNSMOS", unit="file", disable=not self.show_progress):
            audio = self._audio(rendering, path, originals)
            out[rendering, path] = (self._cached("dnsmos", audio, lambda a: dns(a, self.sample_rate))
                                    if rendering == "original" else dns(audio, self.sample_rate))
        return out

    def _transcripts(self, originals: dict[str, np.ndarray]) -> dict[tuple[str, str], str]:
        """``(rendering, path) → recognised words`` for the files of English sources, with a progress bar."""
        asr = _shared("asr")
        english = {path for path in originals if self.languages.english(self._source.get(path))}
        jobs = [("original", path) for path in sorted(english)]
        jobs += [(rendering, path) for rendering in self._order if rendering != "original"
                 for path in self._files[rendering] if path in english]
        out = {}
        for rendering, path in progress(jobs, desc="recognition", unit="file", disable=not self.show_progress):
            audio = self._audio(rendering, path, originals)
            out[rendering, path] = (self._cached("asr", audio, lambda a: asr.transcribe(a, self.sample_rate))
                                    if rendering == "original" else asr.transcribe(audio, self.sample_rate))
        return out

    def _judge_sources(self, text: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
        """Per source: reliable or not (declared language, words heard, the ceiling's dWER)."""
        sources = sorted(set(self._source[p] for p in self._files["original"]))
        words: dict[str, int] = defaultdict(int)
        for (rendering, path), words_heard in text.items():
            if rendering == "original":
                words[self._source[path]] += len(words_heard.split())
        ceiling = None
        if self.ceiling in self._files:
            ceiling = {}
            for source in sources:
                paths = sorted(p for p in self._files[self.ceiling] if self._source[p] == source
                               and (self.ceiling, p) in text)
                if paths:
                    ceiling[source] = float(word_error_rate([text["original", p] for p in paths],
                                                            [text[self.ceiling, p] for p in paths])["wer"])
        return asr_reliability(self.languages, sources, ceiling, words)

    def compute(self, incomplete: set[str] | None = None) -> dict[str, Any]:
        """Per rendering: mean DNSMOS over files, dWER against the original's transcripts and, where the
        files carry reference transcripts, WER, both over the files of reliable sources only (see
        :mod:`transcoder.evaluation.asr_guard`); plus ``files``, ``dwer_by_source``, ``dwer_unreliable`` (no
        reliable source) and a ``note`` when (d)WER was skipped. One warning line names unreliable sources.

        Args:
            incomplete: paths whose windows were not all evaluated (left out of the reference WER only).
        """
        if "original" not in self._files:
            raise ValueError("PerceptualScorer.compute: no 'original' windows were added")
        incomplete = incomplete or set()
        originals = {path: entry.joined() for path, entry in self._files["original"].items()}
        dnsmos = self._dnsmos_scores(originals) if self.dnsmos else {}
        text = self._transcripts(originals) if self.asr_enabled else {}
        self.reliability = self._judge_sources(text)
        reliable = {name for name, info in self.reliability.items() if info["reliable"]}
        note = reliability_note(self.reliability)
        if note and self.asr_enabled:  # once, though the tokenizer's and the anchors' scorers both find it
            unreliable = sorted(name for name, info in self.reliability.items() if not info["reliable"])
            warn_once(note, key="dWER unreliable: " + "\0".join(unreliable))
        results: dict[str, Any] = {}
        for rendering in self._order:
            files = self._files[rendering]
            row: dict[str, Any] = {"files": len(files),
                                   "seconds": sum(self._audio(rendering, p, originals).size for p in files)
                                   / self.sample_rate}
            if self.dnsmos:
                row["dnsmos"] = {key: _finite_mean([dnsmos[rendering, p][key] for p in files])
                                 for key in DNSMOS_KEYS}
            if not self.asr_enabled:
                row["note"] = (f"dWER skipped: the recogniser is English and the material's language is "
                               f"{self.language or 'not given'} (pass language 'en' for English speech)")
                row["dwer_unreliable"] = True
                results[rendering] = row
                continue
            paths = sorted(p for p in files if (rendering, p) in text)
            by_source: dict[str, list[str]] = defaultdict(list)
            for p in paths:
                by_source[self._source[p]].append(p)
            row["dwer_by_source"] = {
                source: {"wer": word_error_rate([text["original", p] for p in ps], [text[rendering, p] for p in ps])
                         ["wer"], "reliable": source in reliable} for source, ps in sorted(by_source.items())}
            trusted = [p for p in paths if self._source[p] in reliable]
            row["dwer_unreliable"] = not trusted
            if trusted:
                row["dwer"] = word_error_rate([text["original", p] for p in trusted],
                                              [text[rendering, p] for p in trusted])
                with_text = [p for p in trusted if p not in incomplete
                             and (files[p].transcript or self._files["original"][p].transcript)]
                if with_text:
                    refs = [self._files["original"][p].transcript or files[p].transcript or "" for p in with_text]
                    row["wer"] = word_error_rate(refs, [text[rendering, p] for p in with_text])
            if note:
                row["note"] = note
            row["transcripts"] = {p: text[rendering, p] for p in paths}
            results[rendering] = row
        return results


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when none)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
