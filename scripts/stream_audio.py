"""Stream an audio file through a causal tokenizer chunk by chunk, as a live input would arrive.

Each chunk of ``--chunk-ms`` goes through the stream encoder (codes out as soon as determined), the code
rows go straight into the stream decoder (mel out) and, with ``--audio``, into the chunked Griffin-Lim.
Prints the algorithmic latency, the real-time factor (compute time / audio duration) of each stage, how many
chunks were late (took longer to process than they last) and the worst against the chunk length, and checks
that the streamed codes equal the offline model's::

    python scripts/stream_audio.py --checkpoint outputs/demo_stream/checkpoints/best.pt \\
        data/librivox-mini/LibriSpeech/dev-clean/9001/1/9001-1-0001.flac --audio --out /tmp/streamed.wav

Without ``--checkpoint``, ``--config`` builds an untrained model from a (causal) training config: the speed
does not depend on the weights. ``--threads`` sets torch's CPU threads (default 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.audio.mel import MelConfig
from transcoder.models.build import build_model
from transcoder.streaming import algorithmic_latency, causal_mel, encode_offline, late_chunks_line, pad_to_rows
from transcoder.training.config import load_config
from transcoder.utils.messages import install_console_warnings

DEFAULT_FILE = "data/librivox-mini/LibriSpeech/dev-clean/9001/1/9001-1-0001.flac"


def _tokenizer(args: argparse.Namespace) -> AudioTokenizer:
    if args.checkpoint:
        return load_tokenizer(args.checkpoint, device=args.device, trust_config=args.trust_config)
    config = load_config(args.config)
    mel = MelConfig.from_dict(config["data"], strict=False)
    return AudioTokenizer(build_model(config["model"], mel).eval(), mel, device=args.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", metavar="AUDIO", default=DEFAULT_FILE, help="audio file (resampled)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="trained causal checkpoint")
    source.add_argument("--config", help="causal training config (untrained weights, for timing)")
    parser.add_argument("--chunk-ms", type=float, default=20.0, help="input chunk length in ms")
    parser.add_argument("--audio", action="store_true", help="also render audio (chunked Griffin-Lim)")
    parser.add_argument("--out", type=Path, default=None, help="write the streamed audio here (needs --audio)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-config", action="store_true",
                        help="let the checkpoint's config name classes outside this project "
                             "(only for a checkpoint of your own code)")
    args = parser.parse_args(argv)
    install_console_warnings()
    torch.set_num_threads(args.threads)

    try:
        tok = _tokenizer(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # CheckpointError, ConfigError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not getattr(tok.model.config, "causal", False):
        print("error: the model is not causal (audioconfig.causal: true is needed to stream)", file=sys.stderr)
        return 2
    wave = tok.load(args.file)
    seconds = wave.numel() / tok.sample_rate
    chunk = max(1, round(args.chunk_ms * tok.sample_rate / 1000))
    latency = algorithmic_latency(tok.model, tok.frontend)
    sr = tok.sample_rate
    print(f"{args.file}: {seconds:.2f} s at {sr} Hz, chunks of {chunk} samples ({1000 * chunk / sr:g} ms), "
          f"{torch.get_num_threads()} thread(s), device {tok.device}")
    print(f"algorithmic latency: patch {1000 * latency['patch'] / sr:g} ms + lookahead "
          f"{1000 * latency['lookahead'] / sr:g} ms = {1000 * latency['total_seconds']:g} ms "
          f"(the STFT window reads {1000 * latency['stft_lookback'] / sr:g} ms of the past, no waiting)")

    encoder = tok.stream_encoder()
    decoder = tok.stream_decoder(audio=args.audio)
    wall = {"encode": 0.0, "decode": 0.0}
    cpu = {"encode": 0.0, "decode": 0.0}
    per_chunk, codes, mels, audio = [], [], [], []
    for piece in [*wave.split(chunk), None]:
        start, start_cpu = time.perf_counter(), time.process_time()
        rows = encoder.push(piece) if piece is not None else encoder.finish()
        mid, mid_cpu = time.perf_counter(), time.process_time()
        outs = [decoder.push(rows)] + ([decoder.finish()] if piece is None else [])
        end, end_cpu = time.perf_counter(), time.process_time()
        wall["encode"] += mid - start
        wall["decode"] += end - mid
        cpu["encode"] += mid_cpu - start_cpu
        cpu["decode"] += end_cpu - mid_cpu
        if piece is not None:  # the final flush is not an input chunk
            per_chunk.append(end - start)
        codes.append(rows)
        mels.extend(out.mel for out in outs)
        audio.extend(out.audio for out in outs if out.audio is not None)
    codes_t = torch.cat(codes)
    label = "decode (mel + Griffin-Lim)" if args.audio else "decode (mel)"
    print(f"codes: {tuple(codes_t.shape)} rows x bands, {tok.bits_per_token} bits, {tok.bitrate:g} bit/s; "
          f"mel frames {sum(m.shape[0] for m in mels)}")
    for name, spent in (("wall clock", wall), ("process CPU time", cpu)):
        total = spent["encode"] + spent["decode"]
        print(f"real-time factor ({name}): encode {spent['encode'] / seconds:.3f}, {label} "
              f"{spent['decode'] / seconds:.3f}, total {total / seconds:.3f} ({total:.2f} s for {seconds:.2f} s audio)")
    print(late_chunks_line(per_chunk, chunk / sr) + " (wall clock)")
    offline = encode_offline(tok.model, tok.frontend, wave.to(tok.device)).cpu()
    same = torch.equal(offline, codes_t)
    print(f"streamed codes equal the offline causal model's: {same}")
    reference = causal_mel(tok.frontend, pad_to_rows(wave[None].to(tok.device), latency["patch"]))[0]
    l1 = (torch.cat(mels).float() - reference).abs().mean().item()
    print(f"mel L1 (model space [-1, 1]) of the streamed reconstruction against the causal input mel: {l1:.4f}")
    if args.out is not None and audio:
        import soundfile as sf

        signal = np.concatenate(audio)[: wave.numel()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(args.out), signal, sr)
        print(f"wrote {args.out} ({signal.size / sr:.2f} s; chunked Griffin-Lim, approximate)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
