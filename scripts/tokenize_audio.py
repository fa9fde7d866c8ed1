"""Turn audio into integer codes with a trained checkpoint, and codes back into audio.

Encode one file or a folder (recursively); one ``.npy`` of codes ``(n_time_tokens, n_freq_patches)``
per audio file, mirroring the folder tree, plus ``manifest.json``::

    python scripts/tokenize_audio.py encode --checkpoint CKPT.pt INPUT_FILE_OR_DIR OUTPUT_DIR

Decode a folder written by ``encode`` (or one ``.npy`` inside it) to WAV via Griffin-Lim (or a neural
vocoder trained by scripts/train_vocoder.py with ``--vocoder VOCODER.pt``), or to mel ``.npy`` files
``(frames, n_mels)`` with ``--mel``::

    python scripts/tokenize_audio.py decode --checkpoint CKPT.pt CODES_DIR_OR_NPY OUTPUT_DIR [--mel] [--vocoder V.pt]

The format (versioned; older unversioned manifests still read) and its checks live in
:mod:`transcoder.codes`; decoding validates every file against the manifest and the checkpoint.
Files of any length are cut into windows of the model's length (the last one zero-padded); their
codes are concatenated along time and decoding trims back to the original duration. Windows of
several files are batched together. A file that fails is reported and skipped; the exit status is
non-zero only when every file failed (or the input holds no files / the arguments are wrong).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.codes import (
    CodesFile,
    CodesFormatError,
    check_codes,
    check_manifest_model,
    codes_dtype,
    find_manifest,
    read_manifest,
    write_manifest,
)
from transcoder.data.audio_io import AUDIO_EXTENSIONS, audio_info, load_audio
from transcoder.data.listing import scan_files


class FileSkipWarning(UserWarning):
    """A file was skipped; the message names it and the reason."""


def _reason(err: BaseException) -> str:
    """``Type: message`` without the path that :class:`AudioDecodeError` puts in front."""
    text = getattr(err, "reason", None) or str(err) or ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _skip(path: str, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", FileSkipWarning, stacklevel=2)


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    if issubclass(category, FileSkipWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_default_formatwarning = warnings.formatwarning


# ------------------------------------------------------------------------------------------------
# encode
# ------------------------------------------------------------------------------------------------


def list_inputs(source: Path, extensions: list[str]) -> tuple[Path, list[str]]:
    """``(root, paths relative to root)`` for a file or a folder searched recursively."""
    if source.is_file():
        return source.parent, [source.name]
    if source.is_dir():
        return source, scan_files(str(source), extensions)
    raise FileNotFoundError(f"input {source} is neither a file nor a directory")


def output_names(rel_paths: list[str]) -> dict[str, str]:
    """Map each input path to its ``.npy`` path: the extension replaced, or appended where two inputs
    in one folder share a stem (``a.wav`` and ``a.flac`` -> ``a.wav.npy``, ``a.flac.npy``)."""
    stems: dict[str, int] = {}
    for rel in rel_paths:
        stem = os.path.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    out = {}
    for rel in rel_paths:
        stem = os.path.splitext(rel)[0]
        out[rel] = f"{rel}.npy" if stems[stem] > 1 else f"{stem}.npy"
    return out


class _AudioFiles(Dataset):
    """Decodes files in DataLoader workers; an item carries the waveform or the error text."""

    def __init__(self, root: Path, rel_paths: list[str], sample_rate: int) -> None:
        self.root, self.rel_paths, self.sample_rate = root, rel_paths, sample_rate

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.rel_paths[index]
        path = self.root / rel
        item: dict[str, Any] = {"rel": rel, "path": str(path), "wave": None, "error": None,
                                "source_sample_rate": None}
        try:
            item["source_sample_rate"] = audio_info(str(path)).sample_rate
            item["wave"] = load_audio(str(path), self.sample_rate)
        except Exception as err:  # noqa: BLE001 - any failure of one file is reported and skipped
            item["error"] = _reason(err)
        return item


def _groups(loader: DataLoader, tokenizer: AudioTokenizer) -> Iterator[list[dict[str, Any]]]:
    """Yield lists of decoded items holding about ``batch_size`` model windows together."""
    group: list[dict[str, Any]] = []
    windows = 0
    for batch in loader:
        for item in batch:
            group.append(item)
            if item["wave"] is not None:
                windows += tokenizer.num_windows(item["wave"].numel())
            if windows >= tokenizer.batch_size:
                yield group
                group, windows = [], 0
    if group:
        yield group


def encode(args: argparse.Namespace) -> int:
    source = Path(args.input)
    out_dir = Path(args.output)
    extensions = [e if e.startswith(".") else f".{e}" for e in args.extensions]
    root, rel_paths = list_inputs(source, extensions)
    if not rel_paths:
        print(f"error: no audio files with extensions {extensions} under {source}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema,
                               batch_size=args.batch_size)
    dtype = codes_dtype(tokenizer.bits_per_token)
    names = output_names(rel_paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(_AudioFiles(root, rel_paths, tokenizer.sample_rate), batch_size=1,
                        num_workers=args.num_workers, collate_fn=list)
    entries: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}

    def write(item: dict[str, Any], codes: torch.Tensor, num_samples: int) -> None:
        target = out_dir / names[item["rel"]]
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, codes.numpy().astype(dtype))
        entries[names[item["rel"]]] = {
            "source": item["rel"],
            "num_samples": num_samples,
            "source_sample_rate": item["source_sample_rate"],
            "frames": -(-num_samples // tokenizer.hop_length),
            "shape": list(codes.shape),
        }

    progress = tqdm(total=len(rel_paths), unit="file", desc="encode", disable=args.quiet)
    for group in _groups(loader, tokenizer):
        ok = []
        for item in group:
            if item["error"] is not None:
                failed[item["path"]] = item["error"]
                _skip(item["path"], item["error"])
            else:
                ok.append(item)
        try:
            encoded = tokenizer.encode_waves([item["wave"] for item in ok])
            pairs = list(zip(ok, encoded, strict=True))
        except Exception:  # noqa: BLE001 - retry one by one to find the file at fault
            pairs = []
            for item in ok:
                try:
                    pairs.append((item, tokenizer.encode_waves([item["wave"]])[0]))
                except Exception as err:  # noqa: BLE001
                    failed[item["path"]] = _reason(err)
                    _skip(item["path"], failed[item["path"]])
        for item, result in pairs:
            try:
                write(item, result.indices, result.num_samples)
            except OSError as err:
                failed[item["path"]] = _reason(err)
                _skip(item["path"], failed[item["path"]])
        progress.update(len(group))
    progress.close()

    pt, pf = tokenizer.patch_size
    manifest = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_sha256": tokenizer.checkpoint_sha256,
        "weights": tokenizer.weights,
        "sample_rate": tokenizer.sample_rate,
        "hop_length": tokenizer.hop_length,
        "n_mels": tokenizer.mel_config.n_mels,
        "window_frames": tokenizer.window_frames,
        "patch_size": [pt, pf],
        "grid_per_window": [tokenizer.time_rows_per_window, tokenizer.n_freq_patches],
        "bits": tokenizer.bits_per_token,
        "codes_dtype": dtype.name,
        "tokens_per_second": tokenizer.tokens_per_second,
        "bitrate": tokenizer.bitrate,
        "source": str(source.resolve()),
        "files": dict(sorted(entries.items())),
        "failed": failed,
    }
    write_manifest(out_dir, manifest)
    return _summary("encoded", len(entries), failed, len(rel_paths))


def _summary(verb: str, done: int, failed: dict[str, str], total: int) -> int:
    print(f"{verb} {done}/{total} files, {len(failed)} failed")
    for path, reason in failed.items():
        print(f"  failed: {path}: {reason}")
    return 1 if total and done == 0 else 0


# ------------------------------------------------------------------------------------------------
# decode
# ------------------------------------------------------------------------------------------------


def _decode_jobs(source: Path, manifest_arg: str | None) -> tuple[Path, Path | None, dict[str, Any] | None,
                                                                   list[str]]:
    """``(codes root, manifest path or None, manifest or None, .npy paths relative to the root)``."""
    if not source.exists():
        raise FileNotFoundError(f"codes input {source} does not exist")
    manifest_path = Path(manifest_arg) if manifest_arg else find_manifest(source if source.is_dir() else source.parent)
    manifest = read_manifest(manifest_path) if manifest_path is not None else None
    root = manifest_path.parent if manifest_path is not None else (source if source.is_dir() else source.parent)
    if source.is_file():
        return root, manifest_path, manifest, [source.resolve().relative_to(root.resolve()).as_posix()]
    if manifest is not None and source.resolve() == root.resolve():
        return root, manifest_path, manifest, list(manifest["files"])
    prefix = source.resolve().relative_to(root.resolve()).as_posix()
    rel_paths = [f"{prefix}/{p}" if prefix != "." else p for p in scan_files(str(source), [".npy"])]
    return root, manifest_path, manifest, rel_paths


def _read_codes(path: Path, manifest_path: Path | None, manifest: dict[str, Any] | None,
                tokenizer: AudioTokenizer) -> tuple[np.ndarray, int | None]:
    """Checked int64 codes of one file and its ``num_samples`` (``None`` without a manifest)."""
    if manifest is None:
        return check_codes(np.load(path, allow_pickle=False), tokenizer.codes_spec, path), None
    codes = CodesFile.load(path, manifest, manifest_path)
    return codes.checked(tokenizer.codes_spec, path), codes.num_samples


def decode(args: argparse.Namespace) -> int:
    source = Path(args.input)
    out_dir = Path(args.output)
    root, manifest_path, manifest, rel_paths = _decode_jobs(source, args.manifest)
    if not rel_paths:
        print(f"error: no .npy code files under {source}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema,
                               batch_size=args.batch_size,
                               vocoder_kwargs={"n_iter": args.gl_iters}, vocoder=args.vocoder)
    if manifest is not None:
        other = check_manifest_model(manifest, tokenizer.codes_spec, manifest_path, tokenizer.checkpoint_sha256,
                                     args.checkpoint)
        if other and not args.force:
            raise ValueError(other + " (pass --force to decode anyway)")
        if other:
            warnings.warn(other, stacklevel=2)
    failed: dict[str, str] = {}
    done = 0
    for rel in tqdm(rel_paths, unit="file", desc="decode", disable=args.quiet):
        path = root / rel
        try:
            codes, num_samples = _read_codes(path, manifest_path, manifest, tokenizer)
            stem = rel[:-4] if rel.endswith(".npy") else rel
            if args.mel:
                mel = tokenizer.decode_to_mel(codes, space=args.mel_space).cpu()
                if num_samples is not None:
                    mel = mel[: -(-int(num_samples) // tokenizer.hop_length)]
                target = out_dir / f"{stem}.mel.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, mel.numpy().astype(np.float32))
            else:
                tokenizer.decode_to_file(codes, out_dir / f"{stem}.wav", num_samples=num_samples, seed=args.seed)
            done += 1
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            failed[str(path)] = _reason(err)
            _skip(str(path), failed[str(path)])
    return _summary("decoded", done, failed, len(rel_paths))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", "-c", required=True, help="trainer checkpoint (.pt)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=16, help="model windows per forward pass")
        p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                       help="use the EMA weights when the checkpoint has them (default: yes)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    enc = sub.add_parser("encode", help="audio file or folder -> .npy codes + manifest.json")
    enc.add_argument("input", help="an audio file or a folder (searched recursively)")
    enc.add_argument("output", help="output folder")
    enc.add_argument("--extensions", nargs="+", default=list(AUDIO_EXTENSIONS),
                     help=f"audio file endings to look for (default: {' '.join(AUDIO_EXTENSIONS)})")
    enc.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                     help="processes decoding audio files")
    common(enc)

    dec = sub.add_parser("decode", help=".npy codes -> WAV (Griffin-Lim or --vocoder) or mel .npy")
    dec.add_argument("input", help="a folder written by encode, a sub-folder of it, or one .npy")
    dec.add_argument("output", help="output folder")
    dec.add_argument("--manifest", default=None, help="manifest.json (default: searched upwards from the input)")
    dec.add_argument("--mel", action="store_true", help="write mel spectrograms (frames, n_mels) instead of WAV")
    dec.add_argument("--mel-space", choices=["model", "db", "power"], default="db",
                     help="scale of --mel output: model space [-1, 1], dB, or power (default: db)")
    dec.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    dec.add_argument("--vocoder", default=None, metavar="CKPT",
                     help="render with this neural vocoder checkpoint (scripts/train_vocoder.py; same mel "
                          "settings as the tokenizer) instead of Griffin-Lim")
    dec.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase seed")
    dec.add_argument("--force", action="store_true", help="decode codes made by a different checkpoint file")
    common(dec)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", FileSkipWarning)
        warnings.formatwarning = _format_warning
        try:
            return encode(args) if args.command == "encode" else decode(args)
        except (FileNotFoundError, ValueError, RuntimeError, CodesFormatError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finally:
            warnings.formatwarning = _default_formatwarning


if __name__ == "__main__":
    sys.exit(main())
