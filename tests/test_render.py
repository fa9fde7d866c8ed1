"""The renderer protocol: Griffin-Lim and the neural vocoder implement it, build_renderer picks between them,
one ChunkedRenderer renders both block by block, and the streaming decoder renders with the loaded vocoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_streaming import MEL, ROW, _causal_checkpoint, _wave
from test_vocoder import _vocoder_checkpoint

from transcoder.api import load_tokenizer
from transcoder.audio import ChunkedRenderer, GriffinLimRenderer, LogMelFrontend, NeuralVocoder, Renderer
from transcoder.audio.mel import MelConfig
from transcoder.audio.render import build_renderer
from transcoder.streaming import decode_offline
from transcoder.utils.checkpoint import CheckpointError

HOP = MEL.hop_length


@pytest.fixture(scope="module")
def vocoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vocoder_checkpoint(tmp_path_factory.mktemp("voc") / "voc.pt", MEL)


@pytest.fixture(scope="module")
def speech_mel() -> torch.Tensor:
    """Model-space mel (T, F) of a chirp in noise, 100 frames."""
    return LogMelFrontend(MEL)(_wave(100 * HOP)[None])[0]


def _split(mel: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Random chunk sizes 1..40 frames."""
    rng = np.random.default_rng(seed)
    cuts = [0]
    while cuts[-1] < mel.shape[0]:
        cuts.append(min(mel.shape[0], cuts[-1] + int(rng.integers(1, 41))))
    return [mel[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _border_frames(frames: int, block: int, margin: int) -> np.ndarray:
    """Frames inside a crossfade: within ``margin`` of a block border."""
    near = np.zeros(frames, dtype=bool)
    for border in range(block, frames, block):
        near[max(0, border - margin): border + margin] = True
    return near


class _FrameLocal:
    """A coherent renderer whose samples of frame t depend on frame t only: chunked rendering must equal it."""

    kind, sample_rate, hop_length, coherent = "frame-local", 16000, HOP, True

    def render(self, mel: torch.Tensor, length: int | None = None, seed: int | None = None) -> torch.Tensor:
        wave = mel.sum(-1).repeat_interleave(self.hop_length, dim=-1)
        return wave if length is None else wave[..., :length]

    def describe(self) -> dict[str, str]:
        return {"type": self.kind}


# -- the protocol ----------------------------------------------------------------------------------------
def test_both_renderers_implement_the_protocol(vocoder_path: Path, speech_mel: torch.Tensor) -> None:
    griffin_lim = build_renderer(MEL, griffin_lim={"n_iter": 4, "nnls_iter": 10})
    neural = build_renderer(MEL, vocoder_path)
    assert isinstance(griffin_lim, GriffinLimRenderer) and isinstance(neural, NeuralVocoder)
    assert griffin_lim.vocoder.n_iter == 4 and griffin_lim.describe()["n_iter"] == 4
    assert neural.describe() == {"type": "neural", "checkpoint": str(vocoder_path)}
    for renderer, kind, coherent in ((griffin_lim, "griffin-lim", False), (neural, "neural", True)):
        assert isinstance(renderer, Renderer)
        assert (renderer.kind, renderer.coherent) == (kind, coherent)
        assert (renderer.sample_rate, renderer.hop_length) == (MEL.sample_rate, HOP)
        batch = speech_mel[None].repeat(2, 1, 1)
        wave = renderer.render(batch, seed=0)
        assert wave.shape == (2, 100 * HOP) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
        assert renderer.render(speech_mel, 1000, seed=0).shape == (1000,)  # unbatched, trimmed
        padded = renderer.render(speech_mel[:10], 12 * HOP, seed=0)
        assert padded.shape == (12 * HOP,) and torch.all(padded[10 * HOP:] == 0)
        assert torch.equal(renderer.render(batch, seed=3), renderer.render(batch, seed=3))  # reproducible
    # Griffin-Lim's seed is its initial phase; the vocoder ignores it.
    assert not torch.equal(griffin_lim.render(speech_mel, seed=1), griffin_lim.render(speech_mel, seed=2))
    assert torch.equal(neural.render(speech_mel, seed=1), neural.render(speech_mel, seed=2))


def test_build_renderer_checks_the_vocoder(vocoder_path: Path, tmp_path: Path) -> None:
    loaded = build_renderer(MEL, vocoder_path)
    assert build_renderer(MEL, loaded) is loaded  # a loaded vocoder is used as it is
    other = MelConfig(sample_rate=MEL.sample_rate, n_mels=24, n_fft=512, hop_length=HOP, target_length=32)
    with pytest.raises(ValueError, match=r"n_mels: 24 vs 16"):
        build_renderer(MEL, _vocoder_checkpoint(tmp_path / "other.pt", other))
    with pytest.raises(TypeError, match="NeuralVocoder"):
        build_renderer(MEL, torch.nn.Identity())  # type: ignore[arg-type]
    with pytest.raises((FileNotFoundError, CheckpointError)):
        build_renderer(MEL, tmp_path / "missing.pt")


# -- chunked rendering -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("block", "margin", "seed"), [(16, 8, 0), (24, 4, 1), (7, 3, 2), (10, 0, 3), (40, 30, 4)])
def test_chunked_equals_whole_for_a_frame_local_renderer(block: int, margin: int, seed: int) -> None:
    """Every seam and the final flush are exact when the two renderings of a crossfade agree (sin² + cos² = 1)."""
    mel = torch.randn(137, 3, generator=torch.Generator().manual_seed(seed))
    renderer = _FrameLocal()
    chunked = ChunkedRenderer(renderer, block, margin=margin)
    assert chunked.margin == min(margin, block // 2)
    pieces, held = [], []
    for chunk in _split(mel, seed):
        pieces.append(chunked.push(chunk))
        held.append(chunked.state_elements())
    pieces.append(chunked.finish())
    out = np.concatenate(pieces)
    whole = renderer.render(mel[None])[0].numpy()
    assert out.shape == whole.shape and np.allclose(out, whole, atol=1e-5)
    # Bounded state: fewer than one block and its context of frames, and one crossfade tail.
    assert max(held) < (block + 2 * chunked.margin) * 3 + 2 * chunked.margin * HOP


def test_chunked_neural_vocoder_equals_the_whole_render_outside_the_crossfades(vocoder_path: Path,
                                                                              speech_mel: torch.Tensor) -> None:
    vocoder = build_renderer(MEL, vocoder_path)
    whole = vocoder.render(speech_mel).numpy()
    block, margin = 24, 8  # margin >= the tiny generator's receptive field
    out = np.concatenate(list(ChunkedRenderer(vocoder, block, margin=margin).blocks(_split(speech_mel, 5))))
    assert out.shape == whole.shape
    near = np.repeat(_border_frames(100, block, margin), HOP)
    assert np.allclose(out[~near], whole[~near], atol=1e-6)
    # In the crossfades: a blend of two nearly equal renderings (amplitude crossfade), a few % of the peak.
    assert np.abs(out - whole).max() < 0.05 * np.abs(whole).max()


def test_chunked_griffin_lim_is_as_faithful_as_the_whole_render(speech_mel: torch.Tensor) -> None:
    """Griffin-Lim's phase differs, so the tolerance is spectral: the chunked render's log-mel is as close to
    the input mel as the whole render's (within 1 dB mean absolute error); seeded, it is reproducible."""
    frontend = LogMelFrontend(MEL)
    griffin_lim = build_renderer(MEL, griffin_lim={"n_iter": 8, "nnls_iter": 20})

    def chunked(seed: int) -> np.ndarray:
        return np.concatenate(list(ChunkedRenderer(griffin_lim, 16, margin=8, seed=seed).blocks(_split(speech_mel, 6))))

    def mae_db(wave: torch.Tensor) -> float:
        rendered = frontend.model_to_db(frontend(wave[None])[0])
        return float((rendered - frontend.model_to_db(speech_mel)).abs().mean())

    out = chunked(0)
    assert out.shape == (100 * HOP,) and np.array_equal(out, chunked(0)) and not np.array_equal(out, chunked(1))
    whole = griffin_lim.render(speech_mel, seed=0)
    assert abs(mae_db(torch.from_numpy(out)) - mae_db(whole)) < 1.0


def test_chunked_renderer_validates() -> None:
    with pytest.raises(ValueError, match="block_frames"):
        ChunkedRenderer(_FrameLocal(), 0)
    with pytest.raises(ValueError, match="crossfade"):
        ChunkedRenderer(_FrameLocal(), 8, crossfade="linear")
    with pytest.raises(ValueError, match=r"\(n, F\)"):
        ChunkedRenderer(_FrameLocal(), 8).push(torch.zeros(1, 4, 3))
    assert ChunkedRenderer(_FrameLocal(), 8).finish().shape == (0,)


# -- the API's decode paths ------------------------------------------------------------------------------
def test_stream_decoder_renders_with_the_loaded_vocoder(tmp_path: Path, vocoder_path: Path) -> None:
    checkpoint = _causal_checkpoint(tmp_path / "causal.pt")
    tok = load_tokenizer(checkpoint, device="cpu", vocoder=vocoder_path)
    plain = load_tokenizer(checkpoint, device="cpu", vocoder_kwargs={"n_iter": 2, "nnls_iter": 2})
    assert tok.renderer_name == "neural" and plain.renderer is plain.griffin_lim
    encoder = tok.stream_encoder()
    codes = torch.cat([encoder.push(_wave(20 * ROW, seed=2)), encoder.finish()])
    rows = codes.shape[0]

    def stream(decoder_tok: object) -> np.ndarray:
        decoder = decoder_tok.stream_decoder(audio=True, margin_frames=8, min_frames=24)  # type: ignore[attr-defined]
        chunks = [decoder.push(codes[a:a + 3]) for a in range(0, rows, 3)] + [decoder.finish()]
        return np.concatenate([c.audio for c in chunks])

    audio = stream(tok)
    offline = tok.renderer.render(decode_offline(tok.model, codes).float()).numpy()
    frames = rows * 4
    assert audio.shape == offline.shape == (frames * HOP,)
    near = np.repeat(_border_frames(frames, 24, 8), HOP)
    assert np.allclose(audio[~near], offline[~near], atol=1e-4)
    assert np.abs(audio - offline).max() < 0.05 * np.abs(offline).max()
    # Not Griffin-Lim: the tokenizer without a vocoder streams other audio.
    assert not np.allclose(stream(plain), audio, atol=1e-3)


def test_evaluation_does_not_import_the_api() -> None:
    """Evaluation sits below the API: importing it must not load transcoder.api (nor the streaming module)."""
    import subprocess
    import sys

    code = ("import sys, transcoder.evaluation.evaluate, transcoder.training.monitor; "
            "print(sorted(m for m in ('transcoder.api', 'transcoder.streaming') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stderr
