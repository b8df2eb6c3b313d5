"""The event loops, each behind one seam (``base.LoopRun``): stdlib asyncio, the C loops (uvloop),
trio; and ``registry``, which patches the loops' entry points and tells the engine which thread
runs which loop. Uses only ``_base``; knows nothing of the engine above it (it tells a
``Listener``).
"""
