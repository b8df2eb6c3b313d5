"""``python -m pytest_loopguard``: the command line. ``report merge`` merges the JSON reports of
CI shards (see ``_plugin/merge.py``); ``run -- COMMAND`` runs a server with its Python processes
watched (see ``_procs/runner.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = (
    "usage: python -m pytest_loopguard report merge REPORT [REPORT ...] [-o PATH] [--help]\n"
    "       python -m pytest_loopguard run [--threshold S] [--timeout S] [--strict] "
    "[--report PATH] -- COMMAND [ARGS...]"
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        from ._procs.runner import main as run

        return run(args[1:])
    if args[:2] != ["report", "merge"]:
        print(USAGE, file=sys.stderr)
        return 2
    from ._plugin.merge import main as merge

    return merge(args[2:])


if __name__ == "__main__":
    raise SystemExit(main())
