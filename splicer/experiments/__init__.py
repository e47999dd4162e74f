"""Experiments: what composes runs into comparisons. ``splicer run`` trains the standard and
SFTN teachers per seed and distils students from each (experiment), adds the online
baselines' rows (baselines) and the linear-probe transfer table (probe); ``splicer sweep``
repeats runs over spec overrides (sweep).

This layer sits above :mod:`splicer.training`, the engine and its parts (the loop, the two
stages, the methods, the baselines' trainers, checkpoints): it calls into training and
training never imports it, so the layers read top to bottom (cli -> experiments -> training).

Submodules are imported where they are used, so that importing this package stays cheap.
"""
