"""When the recogniser's word error rates mean something: languages per source and the Griffin-Lim ceiling guard.

dWER compares the recogniser's transcript of a rendering with its transcript of the original. That only
measures intelligibility when the recogniser understands the original: the bundled recogniser is US-English
PocketSphinx, and on other speech it produces fluent nonsense (a French prompt became "no this poll said they
keep the raccoons chuckles"), against which every rendering scores a similar, meaningless dWER.

Two checks decide, **per source** (top-level folder or speaker, :mod:`transcoder.evaluation.subset`):

* the declared language: ``--language en`` for all, or per source ``--language fr_voice=fr,en_voice=en``
  (a bare value is the default for sources not named: ``--language en,fr_voice=fr``). Only English sources are
  recognised at all.
* the Griffin-Lim ceiling (the true mel rendered by Griffin-Lim, the best any mel tokenizer can do with that
  renderer): when the recogniser's dWER on it exceeds :data:`CEILING_DWER_LIMIT`, or the recogniser heard no
  words in the original, the source's dWER / WER are **unreliable**: left out of the rows' dWER / WER, named in
  ``metrics.json`` (``asr_reliability``), on the table (``unreliable`` when no source is left) and in one warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CEILING_DWER_LIMIT", "LanguagePlan", "asr_reliability", "parse_languages", "reliability_note"]

#: Largest Griffin-Lim-ceiling dWER at which a source's dWER is trusted. Measured with this recogniser and
#: 32 Griffin-Lim iterations: English LibriVox read speech scores 0.225 (benchmarks/2026-12-06-cpu-2core/
#: quality-curve/REPORT.md, 12 windows), while French speech declared English scored 0.565 on the ceiling and
#: Opus 12 kbit/s 0.558, i.e. the transcripts were noise. 0.40 sits well above the English figure (room for a
#: harder voice or a short subset) and well below the figure of speech the recogniser does not understand.
CEILING_DWER_LIMIT = 0.40


@dataclass(frozen=True)
class LanguagePlan:
    """The language of each source: ``by_source[name]`` when named, else ``default``.

    Attributes:
        default: language of sources not named (``None``: not given).
        by_source: source name → language code (``"en"``, ``"fr"``, ``"en-US"`` ...).
    """

    default: str | None = None
    by_source: dict[str, str] = field(default_factory=dict)

    def of(self, source: str | None) -> str | None:
        """The language of ``source``."""
        return self.by_source.get(source, self.default) if source is not None else self.default

    def english(self, source: str | None) -> bool:
        """Whether ``source`` is declared English (``en``, ``en-US``, ``en_GB`` ...)."""
        language = self.of(source)
        return language is not None and language.lower().replace("-", "_").split("_")[0] == "en"

    @property
    def any_english(self) -> bool:
        """Whether any source may be English."""
        return self.english(None) or any(self.english(name) for name in self.by_source)

    def describe(self) -> str:
        """``en`` / ``en; fr_voice=fr`` / ``not given``."""
        parts = ([self.default] if self.default else []) + [f"{k}={v}" for k, v in self.by_source.items()]
        return "; ".join(parts) or "not given"


def parse_languages(value: str | LanguagePlan | dict[str, str] | None) -> LanguagePlan:
    """``"en"`` / ``"fr_src=fr,en_src=en"`` / ``"en,fr_src=fr"`` (or a plan, or ``{source: language}``) → plan.

    Raises:
        ValueError: an empty source name or language, or two defaults.
    """
    if value is None or isinstance(value, LanguagePlan):
        return value or LanguagePlan()
    if isinstance(value, dict):
        return LanguagePlan(None, {str(k): str(v) for k, v in value.items()})
    default: str | None = None
    by_source: dict[str, str] = {}
    for item in (part.strip() for part in str(value).split(",")):
        if not item:
            continue
        if "=" in item:
            source, _, language = (s.strip() for s in item.rpartition("="))
            if not source or not language:
                raise ValueError(f"--language {value!r}: {item!r} needs SOURCE=LANGUAGE, e.g. fr_voice=fr")
            by_source[source] = language
        elif default is not None:
            raise ValueError(f"--language {value!r}: two default languages ({default}, {item}); name sources as "
                             "SOURCE=LANGUAGE")
        else:
            default = item
    return LanguagePlan(default, by_source)


def asr_reliability(plan: LanguagePlan, sources: list[str], ceiling_dwer: dict[str, float] | None,
                    original_words: dict[str, int], limit: float = CEILING_DWER_LIMIT) -> dict[str, dict[str, Any]]:
    """Per source: its language, the ceiling's dWER, whether its dWER / WER are reliable and why not.

    Args:
        plan: the declared languages.
        sources: every source scored.
        ceiling_dwer: source → the Griffin-Lim ceiling's dWER (``None``: no ceiling was rendered, only the
            language and the original's words decide).
        original_words: source → words the recogniser heard in the original.
        limit: the largest trusted ceiling dWER.

    Returns:
        ``{source: {"language", "ceiling_dwer", "reliable", "reason"}}`` (``reason`` ``None`` when reliable).
    """
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        value = (ceiling_dwer or {}).get(source)
        reason = None
        if not plan.english(source):
            reason = f"language {plan.of(source) or 'not given'}: the recogniser is English"
        elif original_words.get(source, 0) == 0:
            reason = "the recogniser heard no words in the original"
        elif value is not None and math.isfinite(value) and value > limit:
            reason = f"Griffin-Lim ceiling dWER {value:.3f} > {limit:.2f}: the recogniser does not understand it"
        out[source] = {"language": plan.of(source), "ceiling_dwer": value, "reliable": reason is None,
                       "reason": reason}
    return out


def reliability_note(reliability: dict[str, dict[str, Any]]) -> str | None:
    """One line naming the sources whose dWER / WER are unreliable (``None`` when every source is reliable)."""
    bad = {name: info for name, info in reliability.items() if not info["reliable"]}
    if not bad:
        return None
    left = len(reliability) - len(bad)
    listed = "; ".join(f"{name} ({info['reason']})" for name, info in bad.items())
    tail = (f"dWER / WER are over the other {left} source(s) only" if left else
            "no source is left, so dWER / WER are marked unreliable")
    return f"dWER / WER unreliable for {len(bad)} of {len(reliability)} source(s): {listed}; {tail}"
