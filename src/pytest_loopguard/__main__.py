"""``python -m pytest_loopguard``: the command line. Today one command: ``report merge``, which
merges the JSON reports of CI shards (see ``_plugin/merge.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m pytest_loopguard report merge REPORT [REPORT ...] [-o PATH] [--help]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] != ["report", "merge"]:
        print(USAGE, file=sys.stderr)
        return 2
    from ._plugin.merge import main as merge

    return merge(args[2:])


if __name__ == "__main__":
    raise SystemExit(main())
