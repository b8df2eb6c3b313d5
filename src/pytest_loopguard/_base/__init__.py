"""The vocabulary and the measuring tools every layer uses, and nothing with a session's state.

``events`` (a block, the errors), ``frames`` (which frames are the user's), ``clocks`` (wall,
CPU, run-queue wait, collections), ``greenlets`` and ``debugger`` (what runs a frame), ``hints``
(a known blocking call and its fix) and ``report`` (every text a user reads). Imports nothing
of the package above it.
"""
