"""Watching the Python processes a session (or ``python -m pytest_loopguard run``) starts.

A startup hook (``hook``, put in place by ``pth``) runs the engine in each child whose
environment names a channel (``channel``); the child sends its blocks there (``wire``).
Knows nothing of pytest: the plugin and the runner both build on it.
"""
