"""SHA-256 of every derivative's content (NIfTI data decompressed, TSVs as bytes).

Used to show that a refactoring changes nothing for users: run the reference dataset before
and after, hash both outputs, compare::

    python benchmarks/derivative_hashes.py OUT_BEFORE > before.json
    python benchmarks/derivative_hashes.py OUT_AFTER > after.json
    python benchmarks/derivative_hashes.py --compare before.json after.json

gzip stores a time stamp, so ``.nii.gz`` files are hashed after decompression (header and
data). JSON sidecars are listed separately (``--json``): they may gain provenance fields.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path


def content_hash(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return hashlib.sha256(data).hexdigest()


def hashes(output_dir: Path, with_json: bool = False) -> dict[str, str]:
    suffixes = (".nii.gz", ".nii", ".tsv", ".mat") + ((".json",) if with_json else ())
    out = {}
    for path in sorted(output_dir.rglob("*")):
        rel = path.relative_to(output_dir).as_posix()
        if not path.is_file() or "/log/" in f"/{rel}" or "/figures/" in f"/{rel}":
            continue
        if rel.endswith(suffixes):
            out[rel] = content_hash(path)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--compare", action="store_true", help="compare two hash files")
    parser.add_argument("--json", action="store_true", help="hash JSON sidecars too")
    opts = parser.parse_args(argv)
    if not opts.compare:
        json.dump(hashes(opts.paths[0], opts.json), sys.stdout, indent=1)
        print()
        return 0
    before, after = (json.loads(p.read_text()) for p in opts.paths)
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    for name, items in (("missing", missing), ("new", extra), ("changed", changed)):
        for item in items:
            print(f"{name}: {item}")
    same = len(set(before) & set(after)) - len(changed)
    print(f"{same} identical, {len(changed)} changed, {len(missing)} missing, {len(extra)} new")
    return 1 if missing or extra or changed else 0


if __name__ == "__main__":
    sys.exit(main())
