"""The engine: usable around any asyncio or trio code, and it knows nothing of pytest.

``guard`` (``LoopGuard``, the public face) subscribes to ``engine`` (leases and subscribers);
the ``watchdog`` thread samples the loop threads that ``_backends.registry`` reports and opens
``block``s in the ``ledger``; ``hang`` interrupts a unit stuck too long; ``strict`` records
known blocking calls however short. The engine speaks to guards only through
``subscriber.Subscriber``.
"""
