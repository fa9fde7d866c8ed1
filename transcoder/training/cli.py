"""The command line of every training script (``scripts/main_audio_tokenizer.py``,
``scripts/train_vocoder.py``): flags, the run, and one exit code per way it ends.

Running the same command again on the same output folder resumes from ``checkpoints/latest.pt``.
Overrides: ``training.max_steps=1000 optimizer.lr=2e-4``.

Exit codes: 0 done; 2 a bad config, data location or argument (one ``error:`` line on stderr, no run
folder is created for a bad data root or model config); 1 the run failed (the ``error:`` line is last
on stderr, after a traceback for unexpected errors); 128+N stopped by signal N after saving
``checkpoints/latest.pt``. On every exit the DataLoader workers are stopped and the process group is
destroyed, so a failing rank never lingers. Under torchrun a rank whose peer died stops waiting in a
collective after ``$TRANSCODER_DIST_TIMEOUT_S`` seconds (default 1800).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import traceback
from pathlib import Path

from transcoder.data import AudioDataError
from transcoder.training.config import config_to_yaml, load_config
from transcoder.training.loader import shutdown_loaders
from transcoder.training.run_dir import RunLockedError
from transcoder.training.trainer import NonFiniteLossError, Trainer
from transcoder.utils.checkpoint import CheckpointError
from transcoder.utils.distributed import cleanup_distributed, init_distributed
from transcoder.utils.messages import install_console_warnings
from transcoder.utils.targets import ConfigError

__all__ = ["BUILD_ERRORS", "RUN_ERRORS", "folder_overrides", "one_line", "parse_args", "report", "resume_command",
           "run"]

#: Raised while building from the config: a bad value, a missing file or folder (exit code 2).
BUILD_ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, RunLockedError)
#: Known ways a run fails that a traceback would not explain better than the message (exit code 1).
RUN_ERRORS = (AudioDataError, NonFiniteLossError, OSError, CheckpointError)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The flags every training script takes (``description``: the script's ``--help`` text)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (model / loss / data / optimizer / training)")
    parser.add_argument("--output-dir", default=None,
                        help="run folder; an existing run there is resumed (required unless --print-config)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (base chain merged, overrides applied, defaults filled) "
                             "as YAML and exit")
    parser.add_argument("--resume", default=None,
                        help="resume from this checkpoint instead of OUTPUT_DIR's newest readable one")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the config differs from the checkpoint's in settings that change "
                             "results (by default that is refused, listing the differences)")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="save and stop at this step without changing the schedule (resume later)")
    parser.add_argument("--validate-only", action="store_true",
                        help="load the checkpoint (as when resuming), run validation on every rank, write "
                             "OUTPUT_DIR/validation_step_N.json and exit")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--train-dir", default=None, metavar="DIR",
                        help="train on the audio files under DIR (any depth): replaces data.train by "
                             "transcoder.data.AudioFolderDataset(root=DIR)")
    parser.add_argument("--val-dir", default=None, metavar="DIR",
                        help="validate on the audio files under DIR: replaces data.val the same way")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY.SUB=VALUE")
    args = parser.parse_intermixed_args(argv)
    if args.output_dir is None and not args.print_config:
        parser.error("the following arguments are required: --output-dir")
    return args


def folder_overrides(train_dir: str | None, val_dir: str | None) -> list[str]:
    """``--train-dir`` / ``--val-dir`` as config overrides: ``data.train`` / ``data.val`` become an
    ``AudioFolderDataset`` of that folder (target and params replaced, whatever the config's dataset was)."""
    overrides = []
    for split, folder in (("train", train_dir), ("val", val_dir)):
        if folder is not None:
            spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": folder}}
            overrides.append(f"data.{split}={json.dumps(spec)}")  # JSON is YAML: any path survives quoting
    return overrides


def resume_command(argv: list[str], world_size: int = 1) -> str:
    """The command that resumes this run: this one without ``--resume CKPT`` (the run folder's newest
    checkpoint is then taken); under ``torchrun`` the same torchrun command."""
    if world_size > 1:
        return "the same torchrun command"
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return "python " + shlex.join([sys.argv[0], *kept])


def one_line(err: BaseException) -> str:
    """``err`` as one line: the message of an exception re-raised from a DataLoader worker (whose text
    is the worker's whole traceback) is its last line; other messages have their lines joined."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.splitlines()[-1].strip()
        name, sep, message = text.partition(": ")
        if sep and name.rpartition(".")[2] == type(err).__name__:
            text = message
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(err).__name__


def report(err: BaseException, exit_code: int, *, with_traceback: bool = False) -> int:
    """Print ``error: ...`` as the last stderr line (after the traceback if asked), write it to the
    run's ``train.log`` when one is open, and return ``exit_code``."""
    plain = exit_code == 2 or isinstance(err, AudioDataError | NonFiniteLossError | CheckpointError)  # says it all
    kind = "" if plain else f"{type(err).__name__}: "
    line = f"error: {kind}{one_line(err)}"
    trace = "".join(traceback.format_exception(err)) if with_traceback else ""
    logger = logging.getLogger("transcoder")  # the run's logger (training.monitor.setup_text_logger)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, (trace + line).rstrip(), (), None)
            handler.handle(record)
    if trace:
        print(trace, end="", file=sys.stderr)
    print(line, file=sys.stderr, flush=True)
    return exit_code


def run(argv: list[str] | None = None, description: str | None = None, task: str | None = None) -> int:
    """Parse ``argv``, train (or validate) and return the exit code (see the module docstring).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        description: the calling script's ``--help`` text.
        task: the task this script trains; a config naming another task is a usage error (exit code 2).
    """
    install_console_warnings()  # "warning: <message>", once each, no library source line under the bar
    args = parse_args(argv, description)
    try:
        config = load_config(args.config, [*folder_overrides(args.train_dir, args.val_dir), *args.overrides])
        if task is not None and config["task"] != task:
            raise ConfigError(f"{args.config}: task={config['task']!r}, but this script trains task {task!r}")
    except BUILD_ERRORS as err:
        return report(err, 2)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    try:
        try:
            env = init_distributed(args.device)
            trainer = Trainer(config, Path(args.output_dir), env, resume=args.resume,
                              allow_config_change=args.allow_config_change)
        except BUILD_ERRORS as err:
            return report(err, 2)
        trainer.resume_command = resume_command(argv if argv is not None else sys.argv[1:], env.world_size)
        if args.validate_only:
            trainer.validate_to_file()
        else:
            trainer.fit(stop_at_step=args.stop_at_step)
        return 0
    except SystemExit as stop:  # the trainer's signal handling: checkpoint saved, exit 128 + signal
        return stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt as err:
        return report(err, 130)
    except RUN_ERRORS as err:
        return report(err, 1)
    except BaseException as err:  # noqa: BLE001 - every failure must end the process, workers included
        return report(err, 1, with_traceback=True)
    finally:
        # Stop the loader workers first: they ignore SIGTERM, and a worker still alive at interpreter exit
        # would be joined forever. Then leave the process group, so no peer waits on this rank.
        shutdown_loaders()
        try:
            cleanup_distributed()
        except Exception as err:  # noqa: BLE001 - a broken group must not turn an exit into a hang/crash
            print(f"warning: could not destroy the process group: {one_line(err)}", file=sys.stderr)

