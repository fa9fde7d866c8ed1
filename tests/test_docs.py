"""The documentation's commands and snippets work as written.

Every fenced block of README.md, QUICKSTART_AUDIO.md and AUDIO_README.md (:data:`DOCS`) is checked:

- ``bash`` / ``sh`` / ``shell`` blocks parse (``bash -n``); every ``python scripts/X.py ...`` (or
  ``torchrun ... scripts/X.py``, ``bash scripts/X.sh``) names a script that exists, and every
  ``--flag`` it passes is one the script's ``--help`` lists (a sub-command's ``--help`` for
  ``tokenize_audio.py encode|decode``);
- ``python`` blocks compile; ``yaml`` blocks load; ``text`` and unlabelled blocks are not checked.

Blocks then RUN, unless the line right before the fence is a marker:

    <!-- doc-test: skip (why: needs a GPU / external data / a long time) -->
    <!-- doc-test: parse-only (why: e.g. installs packages) -->

(the two mean the same here: checked as above, not run; the reason is required). Runnable blocks run
on the CPU (``CUDA_VISIBLE_DEVICES=""``) in one fresh copy of the repository (tracked files plus
untracked files git does not ignore, so no ``outputs/`` of a previous run), file by file in the order
of :data:`DOCS`, in document order: shell blocks with ``bash -euo pipefail`` (``python`` is this
interpreter), Python blocks each in a fresh interpreter, so each must work when pasted on its own.

The one change made to a documented command: every training command (``scripts/main_audio_tokenizer.py``
and ``scripts/train_vocoder.py``, :data:`TRAIN_SCRIPTS`) gets ``training.max_steps=20``
(:data:`TRAIN_OVERRIDES`) appended, so the demos train 20 steps instead of hundreds. The same override
everywhere, so a second run of the same command resumes instead of being refused as a changed config.
A command training a GPU-sized config (:data:`GPU_CONFIG_OVERRIDES`) also gets a tiny model and batch
appended, so its config, flags and data path run on the CPU in seconds. Blocks that train on
``my_audio/`` (the own-audio step) find it filled with the bundled utterances (:data:`OWN_AUDIO`).
A file whose runnable blocks use the checkpoints of a demo (:data:`DEMOS`: the tokenizer demo
``outputs/demo/``, the vocoder demo ``outputs/vocoder_demo/``, the streaming demo ``outputs/demo_stream/``)
gets that demo trained first (same command, same override) when neither an earlier block of the file
nor an earlier file has, so each file's test also runs alone (``-k AUDIO_README``). Sections added later
need nothing here: unmarked blocks run, marked ones are checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "QUICKSTART_AUDIO.md", "AUDIO_README.md")
#: documents that are read, not run: the design notes, the changelog and the measurement reports
OTHER_DOCS = ("AUDIO_ARCHITECTURE.md", "CHANGELOG_AUDIO.md",
              *sorted(str(p.relative_to(REPO)) for p in REPO.glob("benchmarks/**/REPORT.md")))
TRAIN_SCRIPT = "scripts/main_audio_tokenizer.py"
TRAIN_SCRIPTS = (TRAIN_SCRIPT, "scripts/train_vocoder.py")
TRAIN_OVERRIDES = "training.max_steps=20"
# checkpoint folder of a demo -> the documented command that trains it
DEMOS = {
    "outputs/demo/checkpoints/":
        f"python {TRAIN_SCRIPT} configs/tokenizer/audio_demo_librivox_mini.yaml --output-dir outputs/demo",
    "outputs/vocoder_demo/checkpoints/":
        "python scripts/train_vocoder.py configs/vocoder/vocoder_demo_librivox_mini.yaml "
        "--output-dir outputs/vocoder_demo",
    "outputs/demo_stream/checkpoints/":
        f"python {TRAIN_SCRIPT} configs/tokenizer/audio_demo_streaming_librivox_mini.yaml "
        "--output-dir outputs/demo_stream",
}
# GPU-sized configs a documented command trains -> what the test appends after TRAIN_OVERRIDES to run it on a CPU
GPU_CONFIG_OVERRIDES = {
    "configs/tokenizer/audio_simple_bsq_b18.yaml":
        "model.params.audioconfig.width=64 model.params.audioconfig.layers=1 model.params.audioconfig.heads=2 "
        "data.target_length=256 data.batch_size=2 data.num_workers=0",
}
# the folder of the own-audio step -> the bundled audio copied into its train/ and val/ for the test
OWN_AUDIO = {"my_audio/": "data/librivox-mini"}
SHELL = {"bash", "sh", "shell"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[\w-]+)\s*(?P<rest>.*?)\s*-->")
MARKER_KINDS = {"skip", "parse-only"}
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # None: run

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.marker is None


def blocks_of(doc: str) -> list[Block]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, ticks, lang = i, fence.group(1), fence.group(2).lower()
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(ticks):
            body.append(lines[i])
            i += 1
        i += 1
        previous = lines[start - 1].strip() if start > 0 else ""
        found = MARKER.fullmatch(previous)
        blocks.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", found.group(0) if found else None))
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]


def test_docs_have_blocks_and_markers_are_known() -> None:
    for doc in DOCS:
        assert any(b.lang in SHELL | {"python"} for b in blocks_of(doc)), f"{doc}: no shell or Python block"
        for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
            if "doc-test" not in line:
                continue
            found = MARKER.search(line)
            assert found and found.group("kind") in MARKER_KINDS, f"{doc}:{number}: unknown marker {line.strip()!r}"
            assert found.group("rest").startswith("(") and len(found.group("rest")) > 3, \
                f"{doc}:{number}: a marker needs a reason in parentheses: {line.strip()!r}"


def test_docs_cite_nothing_outside_the_repository() -> None:
    # The design notes and the original requirements document are not in the repository; their names are
    # assembled from parts so that this test does not itself mention them.
    design, requirements = "DESIGN" + r"\.md", "spec"
    forbidden = re.compile(rf"{design}|\bthe {requirements}\b|\b{requirements}'s\b|\b{requirements}ification\b",
                           re.IGNORECASE)
    for doc in (*DOCS, *OTHER_DOCS):
        for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
            assert not forbidden.search(line), f"{doc}:{number}: cites a document the reader cannot see: {line}"


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"\s", "-", text)


def test_relative_links_resolve() -> None:
    for doc in (*DOCS, *OTHER_DOCS):
        text = (REPO / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / doc).parent / path if path else REPO / doc
            assert file.exists(), f"{doc}: link to missing {target}"
            if anchor and file.suffix == ".md":
                headings = [_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)]
                assert anchor in headings, f"{doc}: link to missing heading {target}"



# -- the key table ---------------------------------------------------------------------------------
KEY_TABLE_DOC, KEY_TABLE_HEADINGS = "AUDIO_README.md", ("### Every key and its default", "### Tasks")
#: keys whose documented value is an example, not a default (the code has none: they are required)
EXAMPLE_VALUES = {"data.train", "training.init_from.path"}
#: keys taken from elsewhere in the config (documented in the comments of the table instead)
DERIVED = {"model.params.audioconfig.input_size", "model.params.audioconfig.input_length"}


def _params(cls: type, skip: tuple[str, ...] = ()) -> dict[str, object]:
    import inspect
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in ("self", *skip) and p.kind is p.POSITIONAL_OR_KEYWORD}


def _schema_keys() -> dict[str, object]:
    """Every key a config may hold, dotted, with its default, read from the schema and the built classes."""
    import dataclasses

    from transcoder.data.specaugment import SpecAugment
    from transcoder.losses import AudioTokenizerLoss, VocoderLoss
    from transcoder.losses.masked import MaskedPatchLoss
    from transcoder.losses.tokenizer_gan import AudioTokenizerGanLoss
    from transcoder.models.audiobsq import AudioBSQModel, AudioConfig
    from transcoder.models.discriminators import VocoderDiscriminator
    from transcoder.models.mae import AudioMAE
    from transcoder.models.mel_discriminator import MultiScaleMelDiscriminator
    from transcoder.models.vocoder import VocosGenerator
    from transcoder.tasks import task_class
    from transcoder.training import config as schema

    def spec(prefix: str, cls: type, skip: tuple[str, ...] = ()) -> dict[str, object]:
        return {f"{prefix}.target": f"{cls.__module__}.{cls.__name__}",
                **{f"{prefix}.params.{k}": v for k, v in _params(cls, skip).items()}}

    keys: dict[str, object] = {"task": "tokenizer"}
    keys.update(spec("model", AudioBSQModel, ("audioconfig",)))
    keys["model.params.audioconfig"] = None
    keys.update({f"model.params.audioconfig.{f.name}": f.default for f in dataclasses.fields(AudioConfig)
                 if f"model.params.audioconfig.{f.name}" not in DERIVED})
    keys.update(spec("loss", AudioTokenizerLoss))
    keys["loss.target"] = schema.LOSS_DEFAULTS["target"]
    for section in ("data", "optimizer", "training"):
        keys.update({f"{section}.{k}": v for k, v in schema.SECTION_DEFAULTS[section].items()})
    keys.update({f"data.specaugment.{k}": v for k, v in _params(SpecAugment).items()})
    keys["data.specaugment.apply_to"] = schema.SPECAUGMENT_TARGETS[0]
    assert set(schema.SPECAUGMENT_KEYS) == {k.rpartition(".")[2] for k in keys if k.startswith("data.specaugment.")}
    keys.update({f"training.init_from.{k}": v for k, v in schema.INIT_FROM_DEFAULTS.items()})
    gan, vocoder, mae = task_class("tokenizer_gan"), task_class("vocoder"), task_class("mae_pretrain")
    keys.update(spec("tokenizer_gan.discriminator", MultiScaleMelDiscriminator))
    assert gan.default_model_sections["discriminator"]["target"] == keys["tokenizer_gan.discriminator.target"]
    keys.update(spec("tokenizer_gan.loss", AudioTokenizerGanLoss))
    keys.update({f"vocoder.{k}": v for k, v in vocoder.extra_keys.items()})
    keys.update(spec("vocoder.model", VocosGenerator, ("n_mels", "n_fft", "hop_length", "win_length")))
    keys.update(spec("vocoder.discriminator", VocoderDiscriminator))
    keys.update(spec("vocoder.loss", VocoderLoss, ("sample_rate",)))
    keys.update(spec("mae_pretrain.model", AudioMAE, ("audioconfig",)))
    keys.update(spec("mae_pretrain.loss", MaskedPatchLoss))
    assert set(vocoder.model_sections) == set(gan.model_sections) == {"model", "discriminator"}
    assert set(mae.model_sections) == {"model"} and not mae.extra_keys and not gan.extra_keys
    return keys


def _documented_keys() -> dict[str, object]:
    """The YAML blocks of the key table's two sections (every key; the tasks), merged into one mapping."""
    text = (REPO / KEY_TABLE_DOC).read_text(encoding="utf-8").splitlines()
    first = text.index(KEY_TABLE_HEADINGS[0]) + 1
    tasks = text.index(KEY_TABLE_HEADINGS[1]) + 1
    after = next((n for n in range(tasks, len(text)) if text[n].startswith("## ") or text[n].startswith("### ")),
                 len(text))  # 0-based index of the heading after the Tasks section
    merged: dict[str, object] = {}

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    blocks = [b for b in blocks_of(KEY_TABLE_DOC) if b.lang == "yaml" and first < b.line <= after]
    assert len(blocks) >= 2, f"{KEY_TABLE_DOC}: no YAML key table under {KEY_TABLE_HEADINGS}"
    for block in blocks:
        merge(merged, yaml.safe_load(block.code))
    return merged


def _flatten(node: dict, schema: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        section = any(k.startswith(dotted + ".") for k in schema)
        if isinstance(value, dict) and section:
            if dotted in schema:
                flat[dotted] = value
            flat.update(_flatten(value, schema, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _same(documented: object, default: object) -> bool:
    if isinstance(default, tuple | list) and isinstance(documented, list):
        return len(default) == len(documented) and all(_same(d, c) for d, c in zip(documented, default, strict=True))
    if isinstance(default, float) or isinstance(documented, float):
        return (not isinstance(documented, bool) and not isinstance(default, bool) and documented is not None
                and default is not None and abs(float(documented) - float(default)) < 1e-12)
    return documented == default


def _same_target(documented: object, default: object) -> bool:
    """Two dotted class paths name the same class (a package may re-export it: ``transcoder.losses.VocoderLoss``)."""
    from transcoder.utils.targets import get_obj_from_str
    return isinstance(documented, str) and get_obj_from_str(documented) is get_obj_from_str(str(default))


def test_every_schema_key_documented() -> None:
    """The key table of AUDIO_README lists every config key the code accepts, with the code's default, and
    nothing else: a new key without documentation, a changed default or a stale entry fails here."""
    schema = _schema_keys()
    documented = _flatten(_documented_keys(), schema)
    missing = sorted(set(schema) - set(documented))
    stale = sorted(set(documented) - set(schema))
    assert not missing, f"{KEY_TABLE_DOC}: config keys missing from the key table: {missing}"
    assert not stale, f"{KEY_TABLE_DOC}: the key table lists keys the code does not accept: {stale}"
    wrong = [f"{key}: documented {documented[key]!r}, code default {schema[key]!r}" for key in schema
             if key not in EXAMPLE_VALUES and not isinstance(documented[key], dict)
             and not (_same_target if key.endswith(".target") else _same)(documented[key], schema[key])]
    assert not wrong, f"{KEY_TABLE_DOC}: key table defaults differ from the code: {wrong}"


# -- parsing -------------------------------------------------------------------------------------
def logical_lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [line for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def script_invocations(code: str) -> list[tuple[str, list[str]]]:
    """``(script path, its arguments up to the next shell operator)`` for each script a shell block runs."""
    found = []
    for line in logical_lines(code):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for index, token in enumerate(tokens):
            if re.fullmatch(r"(\./)?scripts/[\w.-]+\.(py|sh)", token):
                args = []
                for arg in tokens[index + 1:]:
                    if arg in {"&&", "||", ";", "|", ">", ">>", "<", "&"}:
                        break
                    args.append(arg)
                found.append((token.removeprefix("./"), args))
    return found


_HELP: dict[tuple[str, str | None], str] = {}


def script_help(script: str, subcommand: str | None) -> str:
    """``--help`` of a script (run in this process: no interpreter start per script)."""
    key = (script, subcommand)
    if key not in _HELP:
        argv = [str(REPO / script), *([subcommand] if subcommand else []), "--help"]
        out = io.StringIO()
        saved = sys.argv
        sys.argv = argv
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
                runpy.run_path(str(REPO / script), run_name="__main__")
        finally:
            sys.argv = saved
        _HELP[key] = out.getvalue()
    return _HELP[key]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in SHELL], ids=lambda b: b.where)
def test_shell_block_parses_and_names_real_scripts_and_flags(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert result.returncode == 0, f"{block.where}: bash -n: {result.stderr}"
    for script, args in script_invocations(block.code):
        assert (REPO / script).is_file(), f"{block.where}: {script} does not exist"
        if not script.endswith(".py"):
            continue
        positional = [a for a in args if not a.startswith("-")]
        subcommand = positional[0] if script.endswith("tokenize_audio.py") and positional else None
        help_text = script_help(script, subcommand)
        for arg in args:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
                    f"{block.where}: {script}{' ' + subcommand if subcommand else ''} has no flag {flag}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in {"python", "yaml"}], ids=lambda b: b.where)
def test_python_and_yaml_blocks_parse(block: Block) -> None:
    if block.lang == "python":
        compile(block.code, block.where, "exec")
    else:
        yaml.safe_load(block.code)


# -- running -------------------------------------------------------------------------------------
def shortened(code: str) -> str:
    """The block with :data:`TRAIN_OVERRIDES` appended to every training command."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        if any(script in line for script in TRAIN_SCRIPTS) and not line.lstrip().startswith("#") \
                and "--help" not in line:
            line = f"{line.rstrip()} {TRAIN_OVERRIDES}"
            line += "".join(f" {extra}" for config, extra in GPU_CONFIG_OVERRIDES.items() if config in line)
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the repository: tracked files and untracked ones git does not ignore (without git,
    e.g. an unpacked archive: the tree minus build outputs, caches and ``outputs/``)."""
    root = tmp_path_factory.mktemp("docs") / "repo"
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(
            ".git", ".venv", "outputs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "build"))
        return root
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(root), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def provide_own_audio(code: str, root: Path) -> None:
    """Fill ``my_audio/{train,val}`` (:data:`OWN_AUDIO`) with the bundled audio when a block uses it, by name
    or through a config that reads it."""
    configs = [root / name for name in re.findall(r"configs/[\w./-]+\.yaml", code) if (root / name).is_file()]
    for folder, source in OWN_AUDIO.items():
        used = folder in code or any(folder in config.read_text(encoding="utf-8") for config in configs)
        if not used or (root / folder).exists():
            continue
        for split in ("train", "val"):
            shutil.copytree(root / source, root / folder / split, ignore=shutil.ignore_patterns("*.md"))


def run_block(block: Block, root: Path) -> None:
    provide_own_audio(block.code, root)
    if block.lang in SHELL:
        command = ["bash", "-euo", "pipefail", "-c", shortened(block.code)]
    else:
        command = [sys.executable, "-c", block.code]
    try:
        result = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{block.where}: no result after {BLOCK_TIMEOUT_S} s:\n{block.code}\n{err.stderr}")
    assert result.returncode == 0, (f"{block.where} failed (exit {result.returncode}):\n{block.code}\n"
                                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("doc", DOCS)
def test_runnable_blocks_run_in_a_fresh_copy(doc: str, workdir: Path) -> None:
    runnable = [b for b in blocks_of(doc) if b.runs and b.lang in SHELL | {"python"}]
    for checkpoints, command in DEMOS.items():
        first_use = next((b for b in runnable if checkpoints in b.code and command not in b.code), None)
        if first_use is None or (workdir / checkpoints / "best.pt").exists():
            continue
        if not any(command in b.code for b in runnable[:runnable.index(first_use)]):
            run_block(Block(doc, 0, "bash", command + "\n", None), workdir)
    for block in runnable:
        run_block(block, workdir)
