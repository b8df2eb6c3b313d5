"""``python -m pytest_loopguard report merge``: one view of the JSON reports of CI shards.

Shards run on different machines, each writing its own report. The merge checks they agree (the
same schema version and threshold), writes one report of them all, prints the end-of-run
section, GitHub annotations when asked, and applies a baseline's *fixed* check across all
shards: an entry is fixed only when some shard ran its test and no shard hit it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import pytest

from .._base.report import annotation, summary_lines
from . import baseline as _baseline
from .summary import SCHEMA, VERSION


class MergeError(Exception):
    """Bad input: a message naming the file, for the user, never a traceback."""


def _load(path: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeError(f"{path}: cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise MergeError(f"{path}: not a pytest-loopguard report (schema {SCHEMA!r})")
    if document.get("version") != VERSION:
        raise MergeError(
            f"{path}: report version {document.get('version')!r}, this pytest-loopguard reads "
            f"version {VERSION}: make every shard's report with the same pytest-loopguard"
        )
    fields = (("blocks", list), ("findings", list), ("tests", list), ("threshold", (int, float)))
    for field, kind in fields:
        if not isinstance(document.get(field), kind):
            raise MergeError(f"{path}: no {field!r} of the right type: not a complete report")
    return document


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """The reports at ``paths`` as one; a MergeError when they cannot be merged."""
    documents = [(path, _load(path)) for path in paths]
    first_path, first = documents[0]
    for path, document in documents[1:]:
        if document["threshold"] != first["threshold"]:
            raise MergeError(
                f"{path}: threshold {document['threshold']} s, but {first_path} has "
                f"{first['threshold']} s: shards must run with the same loop_block_threshold"
            )
    modes = {document.get("mode") for _, document in documents}
    blocks = [block for _, document in documents for block in document["blocks"]]
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "threshold": first["threshold"],
        "mode": first.get("mode") if len(modes) == 1 else "fail",
        "tests": sorted({test for _, document in documents for test in document["tests"]}),
        "blocks": sorted(blocks, key=lambda b: (str(b["nodeid"]), str(b["phase"]))),
        "findings": sorted(
            (found for _, document in documents for found in document["findings"]),
            key=lambda f: (str(f["nodeid"]), str(f["kind"])),
        ),
    }


def fixed(document: dict[str, Any], entries: frozenset[_baseline.Entry]) -> list[_baseline.Entry]:
    """The baseline's entries whose test some shard ran and no shard's block hit."""
    ran = set(document["tests"])
    hit = {
        _baseline.entry_of(block)
        for block in document["blocks"]
        if block.get("verdict") != "allowed"
    }
    hit.update(_baseline.entry_of_finding(found) for found in document["findings"])
    return sorted(e for e in entries if e.nodeid in ran and e not in hit)


def _print_summary(document: dict[str, Any], out: TextIO, annotate: bool) -> None:
    blocks = document["blocks"]
    if annotate:
        for block in blocks:
            if block.get("verdict") in ("failed", "warned"):
                print(annotation(block), file=out)
    counted = [b for b in blocks if b.get("verdict") in ("failed", "warned")]
    known = sum(b.get("verdict") == "known" for b in blocks)
    print("=" * 20 + " pytest-loopguard: event loop blocks " + "=" * 20, file=out)
    for line in summary_lines(counted, len(blocks) - len(counted) - known, known=known):
        print(line, file=out)
    findings = document["findings"]
    if findings:
        listed = sum(f.get("verdict") == "known" for f in findings)
        print(
            f"{len(findings)} finding(s) of the SQLAlchemy guards (N+1, leaks), {listed} of "
            "them known",
            file=out,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_loopguard report merge",
        description="Merge the JSON reports of CI shards into one, print the summary, and "
        "check a baseline across all of them.",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT", help="a shard's JSON report")
    parser.add_argument("-o", "--output", metavar="PATH", help="write the merged report here")
    parser.add_argument(
        "--github-annotations", action="store_true", help="print a ::error/::warning per block"
    )
    parser.add_argument("--baseline", metavar="PATH", help="list its entries no shard hit")
    parser.add_argument(
        "--baseline-strict", action="store_true", help="exit 1 when an entry is fixed"
    )
    return parser


def main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Exit status: 0, 1 when a block failed or (strict) an entry is fixed, 2 for bad input."""
    options = _parser().parse_args(argv)
    try:
        document = merge(options.reports)
        entries = None if options.baseline is None else _baseline.load(options.baseline, False)
    except (MergeError, pytest.UsageError) as exc:
        print(f"pytest-loopguard: {str(exc).removeprefix('pytest-loopguard: ')}", file=err)
        return 2
    if options.output:
        _baseline.write_text(options.output, json.dumps(document, indent=2) + "\n")
    _print_summary(document, out, options.github_annotations)
    failed = [
        f for f in (*document["blocks"], *document["findings"]) if f.get("verdict") == "failed"
    ]
    status = 1 if failed else 0
    if entries is not None:
        gone = fixed(document, entries)
        for entry in gone:
            print(
                f"fixed — remove it: {entry.nodeid}: {entry.file} in {entry.function}: "
                f"{entry.source}",
                file=out,
            )
        if gone and options.baseline_strict:
            status = 1
    return status
