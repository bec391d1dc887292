"""What checking an artifact before reuse costs: sha256 of every file against a size-only check.

Times, for each folder, what a build adds (recording size and sha256 of every file) and what a lookup adds
(`cache.verify: sha256`, then `cache.verify: size`), median of `--repeats`, page cache warm (a lookup right after a
build or a previous run reads from memory; a cold read is bounded by the disk instead).

    .venv/bin/python bench/verify_cost.py --artifacts artifacts            # every artifact of a cache
    .venv/bin/python bench/verify_cost.py --folder train=path/to/model --folder export=path/to/onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, markdown_table, median, update_doc, write_results

from ner_pipeline.artifacts import ArtifactStore, folder_size
from ner_pipeline.integrity import check_files, file_records

TIMES = ("record_s", "sha256_s", "size_s")


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of `repeats` calls, and the last call's result."""
    walls, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        walls.append(time.perf_counter() - started)
    return median(walls), result


def measure(label: str, folder: Path, repeats: int) -> dict[str, Any]:
    """Record the folder's files once (warming the page cache), then time recording and both checks."""
    file_records(folder)
    record_s, records = timed(lambda: file_records(folder, exclude=("manifest.json",)), repeats)
    sha_s, damage = timed(lambda: check_files(folder, records, "sha256"), repeats)
    size_s, _ = timed(lambda: check_files(folder, records, "size"), repeats)
    assert damage == [], damage
    size_mb = folder_size(folder) / 1e6
    return {
        "artifact": label,
        "files": len(records),
        "size_mb": round(size_mb, 1),
        "record_s": record_s,
        "sha256_s": sha_s,
        "size_s": size_s,
        "sha256_mb_per_s": size_mb / sha_s if sha_s else None,
    }


def folders(args: argparse.Namespace) -> list[tuple[str, Path]]:
    found = [(label, Path(path)) for label, _, path in (f.partition("=") for f in args.folder)]
    if args.artifacts:
        found += [(f"{a.stage}/{a.key[:8]}", a.path) for a in ArtifactStore(args.artifacts).list()]
    if not found:
        raise SystemExit("give --artifacts ROOT or --folder LABEL=PATH")
    return found


def measured_args(args: argparse.Namespace) -> list[str]:
    """The command-line arguments naming what was measured, for the report."""
    named = [f"--artifacts {args.artifacts}"] if args.artifacts else []
    return [*named, *(f"--folder {f}" for f in args.folder), f"--repeats {args.repeats}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", help="An artifact cache: measure each of its artifacts.")
    parser.add_argument("--folder", action="append", default=[], help="LABEL=PATH, a folder measured as one artifact.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="What the folders are, for the report.")
    parser.add_argument("--write-doc", action="store_true", help="Rewrite this section of docs/BENCHMARKS.md.")
    args = parser.parse_args()
    rows = [measure(label, path, args.repeats) for label, path in folders(args)]
    total = {k: sum(r[k] for r in rows) for k in ("size_mb", *TIMES)}
    write_results("verify_cost", {"rows": rows, "total": total, "note": args.note, "repeats": args.repeats})
    header = ("artifact", "files", "MB", "record at build ms", "sha256 check ms", "size check ms", "sha256 MB/s")
    table = [
        (r["artifact"], r["files"], r["size_mb"], *(1000 * r[k] for k in TIMES), r["sha256_mb_per_s"] or "-")
        for r in rows
    ]
    table.append(("total", "", total["size_mb"], *(1000 * total[k] for k in TIMES), ""))
    text = markdown_table(header, table)
    print(text)
    if args.write_doc:
        section = (
            "## Checking artifacts before reuse (`bench/verify_cost.py`)\n\n"
            f"Command: `.venv/bin/python bench/verify_cost.py {' '.join(measured_args(args))}`. {args.note}\n"
            f"Median of {args.repeats} repeats, page cache warm. Machine: {machine()}.\n\n{text}\n\n"
            f"A run that reuses all of these checks each once before reuse: {total['sha256_s']:.2f} s with "
            f"`cache.verify: sha256` (the default), {1000 * total['size_s']:.2f} ms with `cache.verify: size`, "
            "which misses an overwrite of equal size. A build pays the recording column once.\n"
        )
        update_doc("verify_cost", section)


if __name__ == "__main__":
    main()
