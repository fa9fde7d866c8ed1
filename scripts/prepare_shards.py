#!/usr/bin/env python
"""Write a config's dataset (any target: folders, LibriSpeech, Common Voice, Lhotse manifests) into tar shards.

    python scripts/prepare_shards.py configs/tokenizer/audio_librispeech_bsq_b18.yaml --split train \\
        --output /shared/shards/librispeech-train --max-records 2000
    # then train from them: data.train={target: transcoder.data.ShardDataset, params: {shards: /shared/...}}

Each record keeps the source file's bytes (FLAC stays FLAC); ``shards.json`` lists the shards with
their record counts and seconds, and the files left out as unreadable (see
transcoder/data/shard_format.py for the layout). Aim for shards of 100 MB to 1 GB and at least
``nodes x GPUs x num_workers`` of them, so every loader worker of every rank has its own shards.
``key=value`` arguments (anywhere on the command line) override the config like for training. A failed
write (e.g. a full disk) is one line naming the file and the free space, exit status 1; the incomplete shard
is removed and no ``shards.json`` is written.
"""

from __future__ import annotations

import argparse
import sys
import time

from transcoder.audio import MelConfig
from transcoder.data import build_dataset, write_dataset_shards
from transcoder.training.config import load_config
from transcoder.utils.targets import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training YAML whose data.<split> is sharded")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    parser.add_argument("--split", default="train", choices=["train", "val"], help="which data block (default train)")
    parser.add_argument("--output", required=True, help="new folder for shards.json and shard-*.tar")
    parser.add_argument("--max-records", type=int, default=1000, help="records per shard (default 1000)")
    parser.add_argument("--max-mb", type=float, default=1024.0, help="megabytes per shard (default 1024)")
    args = parser.parse_intermixed_args(argv)  # overrides anywhere, as for training
    try:
        config = load_config(args.config, args.overrides)
        spec = config["data"][args.split]
        if spec is None:
            raise ConfigError(f"{args.config}: data.{args.split} is null: nothing to shard")
        mel = MelConfig.from_dict(config["data"], strict=False)
        dataset = build_dataset(spec, sample_rate=mel.sample_rate, clip_samples=mel.clip_samples, mode="train")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            last[0] = now
            print(f"{done}/{total} files ({done / max(now - start, 1e-9):.0f}/s)", file=sys.stderr)

    try:
        manifest = write_dataset_shards(dataset, args.output, max_records=args.max_records,
                                        max_bytes=int(args.max_mb * 2**20),
                                        source={"config": str(args.config), "split": args.split,
                                                "target": spec["target"]}, progress=progress)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a failed write: the message names the file and the free space
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(manifest.shards)} shards, {manifest.num_records} records, {manifest.seconds / 3600:.2f} h "
          f"to {manifest.root} in {time.perf_counter() - start:.1f} s; {len(manifest.skipped)} unreadable files "
          f"left out (listed in shards.json)")
    for entry in manifest.skipped[:5]:
        print(f"  left out {entry['name']}: {entry['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
