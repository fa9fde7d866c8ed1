"""Re-read a whole codes folder and list every problem (``scripts/tokenize_audio.py --verify DIR``).

Readers stop at the first problem; this lists them all, one line each naming the file and the field: the
header, every unit index (:mod:`transcoder.codes_check`), every unit index the header plans but the folder
lacks, and every array (missing, unreadable, another dtype / shape / row count, another SHA-256).
"""

from __future__ import annotations

from pathlib import Path

from transcoder.codes import INDEX_DIR, CodesFormatError, CodesIndex, unit_index_path

__all__ = ["verify_folder"]


def verify_folder(folder: str | Path) -> list[str]:
    """Every problem of the codes folder ``folder`` (empty when it is sound)."""
    folder = Path(folder)
    problems: list[str] = []
    try:
        index = CodesIndex.open(folder, problems)
    except CodesFormatError as err:  # an unreadable header or manifest: nothing else can be read
        return [*problems, str(err)]
    broken = {p.split(":")[0].removeprefix("index ") for p in problems}
    for unit in index.missing_units:
        path = unit_index_path(folder, unit)
        if str(path) not in broken:
            problems.append(f"{path}: missing (the header plans num_units={index.num_units}; "
                            f"{len(index.units_done)} unit indexes are in {folder / INDEX_DIR})")
    return problems + index.check_arrays()
