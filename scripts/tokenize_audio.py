"""Turn audio into integer codes with a trained checkpoint, and codes back into audio.

Encode a folder (searched recursively), one file, a Lhotse CutSet or RecordingSet manifest, or a shard
folder from scripts/prepare_shards.py into a codes folder (format: transcoder/codes.py)::

    python scripts/tokenize_audio.py encode -c CKPT.pt INPUT OUTPUT_DIR [--layout packed|files] [--bits K]
    torchrun --nproc_per_node 4 scripts/tokenize_audio.py encode -c CKPT.pt cuts.jsonl.gz OUTPUT_DIR

``--layout packed`` (the default for manifests and shards) writes one shard of codes per work unit
plus its index; ``files`` (the default for folders) writes ``<id>.npy`` per utterance. Files are
streamed window by window (memory does not grow with their length); ranks split the work units and
never wait for each other; rerunning the same command resumes, skipping finished units. A file that
fails is recorded in the index with its reason and counted in the summary. ``--bits K`` keeps the first
``K`` bits of every token (a model trained with ``model.params.nested_bits``); the folder records the width
and decoding reads it from there.

Decode a codes folder (either layout, or an older manifest.json folder), some utterances of it
(``--id``), or one ``.npy`` / ``.npz`` to WAV (``<id>.wav``) via Griffin-Lim or ``--vocoder``, or to mel
``.npy`` ``(frames, n_mels)`` with ``--mel``::

    python scripts/tokenize_audio.py decode -c CKPT.pt CODES_DIR OUTPUT_DIR [--id spk1/a] [--mel]

Check a codes folder (header, every unit index, every array and its SHA-256) and list every problem::

    python scripts/tokenize_audio.py --verify CODES_DIR

Exit status: 0 when something was encoded / decoded (failures are listed), 1 when every file failed or
the disk is full, 2 for a usage error, a busy output folder, or codes of another checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.codes import (
    CodesFile,
    CodesFormatError,
    CodesIndex,
    DiskFullError,
    atomic_write,
    check_codes,
    check_manifest_model,
    find_codes_root,
)
from transcoder.codes_verify import verify_folder
from transcoder.data.audio_io import AUDIO_EXTENSIONS
from transcoder.data.corpus import open_corpus
from transcoder.encode_corpus import encode_corpus
from transcoder.utils.locking import FolderLockedError
from transcoder.utils.names import fit_relative


class FileSkipWarning(UserWarning):
    """A file was skipped; the message names it and the reason."""


def _reason(err: BaseException) -> str:
    """``Type: message`` without the path that :class:`AudioDecodeError` puts in front."""
    text = getattr(err, "reason", None) or str(err) or ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    if issubclass(category, FileSkipWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_default_formatwarning = warnings.formatwarning


def _device(arg: str | None) -> str | None:
    """``--device``, or under torchrun the GPU of this local rank when CUDA is there."""
    if arg is not None:
        return arg
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return None


def encode(args: argparse.Namespace) -> int:
    extensions = [e if e.startswith(".") else f".{e}" for e in args.extensions]
    source = open_corpus(args.input, extensions=extensions, supervisions=args.supervisions,
                         per_supervision=not args.whole_cuts, audio_root=args.audio_root)
    if source.num_items == 0:
        print(f"error: no audio files with extensions {extensions} under {args.input}", file=sys.stderr)
        return 2
    layout = args.layout or ("files" if source.kind in ("folder", "file") else "packed")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    tokenizer = load_tokenizer(args.checkpoint, device=_device(args.device), use_ema=args.use_ema,
                               batch_size=args.batch_size, trust_config=args.trust_config)
    summary = encode_corpus(tokenizer, source, args.output, layout=layout, unit_size=args.unit_size, rank=rank,
                            world_size=world_size, num_workers=args.num_workers,
                            progress=not args.quiet and rank == 0, bits=args.bits,
                            warn=lambda text: warnings.warn(text, FileSkipWarning, stacklevel=1))
    for line in summary.lines():
        print(line)
    return 1 if summary.failed and summary.encoded == 0 else 0


def _summary(verb: str, done: int, failed: dict[str, str], total: int) -> int:
    print(f"{verb} {done}/{total} files, {len(failed)} failed")
    for path, reason in failed.items():
        print(f"  failed: {path}: {reason}")
    return 1 if total and done == 0 else 0


# ------------------------------------------------------------------------------------------------
# decode
# ------------------------------------------------------------------------------------------------


def _decode_jobs(source: Path, ids: list[str] | None) -> tuple[CodesIndex | None, list[tuple[str, CodesFile | str]]]:
    """``(index or None, [(utterance id, CodesFile or id in the index)])`` for a folder, sub-folder or file."""
    if not source.exists():
        raise FileNotFoundError(f"codes input {source} does not exist")
    if source.is_file():
        if source.suffix == ".npz":
            return None, [(source.stem, CodesFile.load(source))]
        root = find_codes_root(source.parent)
        if root is None:
            return None, [(source.stem, str(source))]
        index = CodesIndex.open(root)
        rel = source.resolve().relative_to(root.resolve()).as_posix()
        matches = [u.id for u in index if u.file == rel]
        if not matches:
            raise CodesFormatError(f"{source}: not listed in the index of {root} (as {rel!r})")
        return index, [(matches[0], matches[0])]
    root = find_codes_root(source)
    if root is None:
        raise CodesFormatError(f"{source}: no codes.json (or manifest.json) here or above: not a codes folder")
    index = CodesIndex.open(root)
    if index.missing_units:
        warnings.warn(f"{root / 'index'} lacks {len(index.missing_units)} of the header's num_units={index.num_units} "
                      f"unit indexes (first: unit-{index.missing_units[0]:06d}.json): decoding the "
                      f"{len(index)} utterances of the others", FileSkipWarning, stacklevel=1)
    prefix = source.resolve().relative_to(root.resolve()).as_posix()
    chosen = [u.id for u in index if prefix == "." or u.id.startswith(prefix + "/")]
    if ids:
        missing = [i for i in ids if i not in index]
        if missing:
            raise CodesFormatError(f"{root}: no utterance {missing[0]!r} (of {len(index)})")
        chosen = list(ids)
    return index, [(uid, uid) for uid in chosen]


def _codes(job: CodesFile | str, index: CodesIndex | None, tokenizer: AudioTokenizer,
           bits: int | None) -> tuple[np.ndarray, int | None, int]:
    """Checked int64 codes of one utterance, its ``num_samples`` (``None`` for a bare ``.npy``) and their width
    (the file's or folder's; ``bits`` or the model's for a bare ``.npy``)."""
    recorded = job.bits if isinstance(job, CodesFile) else int(index.header["bits"]) if index is not None else None
    if bits is not None and recorded is not None and bits != recorded:
        raise CodesFormatError(f"--bits {bits}, but the codes record {recorded} bits per token (leave --bits out: "
                               "the width is read from the codes)")
    if isinstance(job, CodesFile):
        return job.checked(tokenizer.codes_spec, job.source or "codes"), job.num_samples, job.bits
    if index is None:
        spec = tokenizer.codes_spec.at_bits(tokenizer.check_bits(bits), job)
        return check_codes(np.load(job, allow_pickle=False), spec, job), None, spec.bits
    codes = index.codes_file(job)
    where = index.folder / (index[job].shard or str(index[job].file))
    return codes.checked(tokenizer.codes_spec, f"{where} ({job})"), codes.num_samples, codes.bits


def decode(args: argparse.Namespace) -> int:
    index, jobs = _decode_jobs(Path(args.input), args.id)
    out_dir = Path(args.output)
    if not jobs:
        print(f"error: no codes under {args.input}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema,
                               batch_size=args.batch_size,
                               vocoder_kwargs={"n_iter": args.gl_iters}, vocoder=args.vocoder,
                               trust_config=args.trust_config)
    if index is not None:
        other = check_manifest_model(index.header, tokenizer.codes_spec, index.folder, tokenizer.checkpoint_sha256,
                                     args.checkpoint)
        if other and not args.force:
            raise ValueError(other + " (pass --force to decode anyway)")
        if other:
            warnings.warn(other, stacklevel=2)
        if args.bits is not None and args.bits != int(index.header["bits"]):
            raise CodesFormatError(f"--bits {args.bits}, but the codes in {index.folder} record {index.header['bits']} "
                                   "bits per token (leave --bits out: the width is read from the codes)")
    failed: dict[str, str] = {}
    done = 0
    for uid, job in tqdm(jobs, unit="file", desc="decode", disable=args.quiet):
        try:
            codes, num_samples, bits = _codes(job, index, tokenizer, args.bits)
            if args.mel:
                mel = tokenizer.decode_to_mel(codes, space=args.mel_space, bits=bits).cpu()
                if num_samples is not None:
                    mel = mel[: -(-int(num_samples) // tokenizer.hop_length)]
                array = mel.numpy().astype(np.float32)
                name = fit_relative(uid, ".mel.npy")  # a long id is shortened with a hash, never fails the write
                atomic_write(out_dir / f"{name}.mel.npy", lambda handle, a=array: np.save(handle, a))
            else:
                tokenizer.decode_to_file(codes, out_dir / f"{fit_relative(uid, '.wav')}.wav", num_samples=num_samples,
                                         seed=args.seed,
                                         bits=bits)
            done += 1
        except DiskFullError:
            raise
        except Exception as err:  # noqa: BLE001 - one bad utterance must not stop the others
            failed[uid] = _reason(err)
            warnings.warn(f"skipping {uid}: {failed[uid]}", FileSkipWarning, stacklevel=1)
    return _summary("decoded", done, failed, len(jobs))


def verify(folder: Path) -> int:
    """``--verify``: re-read a whole codes folder and print every problem (:func:`verify_folder`); 0 if none."""
    problems = verify_folder(folder)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"error: {folder}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{folder}: ok")
    return 0


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", type=Path, default=None, metavar="DIR",
                        help="re-read the codes folder DIR (header, every unit index, every array and its checksum) "
                             "and report every problem; exit 1 if there is any")
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", "-c", required=True, help="trainer checkpoint (.pt)")
        p.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1 ... (default: cuda when available; cuda:LOCAL_RANK under torchrun)")
        p.add_argument("--batch-size", type=int, default=16, help="model windows per forward pass")
        p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                       help="use the EMA weights when the checkpoint has them (default: yes)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--trust-config", action="store_true",
                       help="let the checkpoint's config name classes outside this project "
                             "(only for a checkpoint of your own code)")

    enc = sub.add_parser("encode", help="audio folder / file / Lhotse manifest / shards -> codes folder")
    enc.add_argument("input", help="a folder (searched recursively), an audio file, a Lhotse CutSet or RecordingSet "
                                   "manifest (.jsonl.gz), or a shard folder (shards.json)")
    enc.add_argument("output", help="codes folder (a rerun with the same settings resumes it)")
    enc.add_argument("--layout", choices=["packed", "files"], default=None,
                     help="packed: one codes shard per work unit; files: <id>.npy per utterance "
                          "(default: files for a folder or file, packed for manifests and shards)")
    enc.add_argument("--unit-size", type=int, default=256,
                     help="utterances per work unit (= per packed shard; the unit of resuming; default 256)")
    enc.add_argument("--supervisions", default=None, help="SupervisionSet manifest for a RecordingSet input")
    enc.add_argument("--whole-cuts", action="store_true",
                     help="encode whole cuts / recordings instead of one utterance per supervision")
    enc.add_argument("--audio-root", default=None,
                     help="folder relative audio paths of a Lhotse manifest are relative to (default: cwd)")
    enc.add_argument("--extensions", nargs="+", default=list(AUDIO_EXTENSIONS),
                     help=f"audio file endings to look for (default: {' '.join(AUDIO_EXTENSIONS)})")
    enc.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                     help="processes decoding audio per rank (0: decode in the main process)")
    enc.add_argument("--bits", type=int, default=None, metavar="K",
                     help="bits per token kept: the first K bits of every token, for a model trained with "
                          "model.params.nested_bits (default: all of the model's bits)")
    common(enc)

    dec = sub.add_parser("decode", help="codes -> WAV (Griffin-Lim or --vocoder) or mel .npy")
    dec.add_argument("input", help="a codes folder (either layout), a sub-folder of one, or one .npy / .npz")
    dec.add_argument("output", help="output folder (<id>.wav, or <id>.mel.npy with --mel)")
    dec.add_argument("--id", action="append", default=None, metavar="ID",
                     help="decode only this utterance (repeatable)")
    dec.add_argument("--mel", action="store_true", help="write mel spectrograms (frames, n_mels) instead of WAV")
    dec.add_argument("--mel-space", choices=["model", "db", "power"], default="db",
                     help="scale of --mel output: model space [-1, 1], dB, or power (default: db)")
    dec.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    dec.add_argument("--vocoder", default=None, metavar="CKPT",
                     help="render with this neural vocoder checkpoint (scripts/train_vocoder.py; same mel "
                          "settings as the tokenizer) instead of Griffin-Lim")
    dec.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase seed")
    dec.add_argument("--force", action="store_true", help="decode codes made by a different checkpoint file")
    dec.add_argument("--bits", type=int, default=None, metavar="K",
                     help="width of a bare .npy of codes (a codes folder or .npz records its own; default: the "
                          "model's bits)")
    common(dec)
    args = parser.parse_args(argv)
    if args.verify is not None:
        if args.command is not None:
            parser.error("--verify DIR takes no command")
        return args
    if args.command is None:
        parser.error("a command is required: encode or decode (or --verify DIR)")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.command == "encode" and args.unit_size < 1:
        parser.error(f"--unit-size must be >= 1, got {args.unit_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", FileSkipWarning)
        warnings.formatwarning = _format_warning
        try:
            if args.verify is not None:
                return verify(args.verify)
            return encode(args) if args.command == "encode" else decode(args)
        except DiskFullError as err:
            print(f"error: {err.strerror}", file=sys.stderr)
            return 1
        except (FileNotFoundError, ValueError, RuntimeError, CodesFormatError, FolderLockedError,
                FloatingPointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finally:
            warnings.formatwarning = _default_formatwarning


if __name__ == "__main__":
    sys.exit(main())
