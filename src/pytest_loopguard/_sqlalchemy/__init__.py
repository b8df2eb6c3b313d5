"""The SQLAlchemy guards' parts: ``sessions`` (one session in two tasks, connections never given
back), ``nplusone`` (the same SELECT N times from one line), ``strict`` (detached reads). With
``pytest_loopguard.sqlalchemy``, the only modules that import SQLAlchemy.
"""
