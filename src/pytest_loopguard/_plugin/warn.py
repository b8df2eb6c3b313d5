"""Our warnings, at the user's line: one way for blocks, the SQLAlchemy guards and the
lifecycle checks alike."""

from __future__ import annotations

import warnings


def warn_never_raise(warning: Warning, filename: str, lineno: int) -> None:
    """Warn at the user's line as the filters say — except that a filter turning it into an
    error (``filterwarnings = error``, ``-W error``, which well-kept suites set) does not: warn
    mode promises never to change an outcome, and a raised warning would fail the test (and
    show our internals as its traceback). Then it is shown as a warning all the same, in
    pytest's warnings summary; the terminal section and the JSON report have it either way."""
    try:
        warnings.warn_explicit(warning, None, filename, lineno)
    except Warning as raised:
        if raised is not warning:
            raise
        with warnings.catch_warnings():  # pytest's recorder stays; only the filters are ours
            warnings.simplefilter("always")
            warnings.warn_explicit(warning, None, filename, lineno)
