"""The pytest layer: ``options`` (the one table of settings), ``settings`` (resolved once, frozen),
``markers`` (a test's own settings), ``phases`` (one test's phases under the session's guard),
``verdict`` (a phase judged once), ``reprs`` and ``summary`` (what the user reads on the report
and at the end), ``trio_fixtures``. The entry point, ``pytest_loopguard.plugin``, is its thin
face. Uses the engine; the engine never uses it.
"""
