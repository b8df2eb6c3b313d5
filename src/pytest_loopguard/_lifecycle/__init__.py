"""Async lifecycle bugs: tasks left pending, task exceptions nobody retrieved, coroutines never
awaited, threads left running — each recorded at the user's line that created it. Engine side:
nothing of pytest (the plugin says which test owns what is created, and reads the findings)."""
