"""Training: the engine and its parts. Stage 1 (the SFTN teacher, or the standard teacher),
stage 2 (distilling a student from it), the distillation methods, the online baselines'
trainers, evaluation and checkpoints. Experiments that combine runs live one layer up, in
:mod:`splicer.experiments`; nothing here imports them.

Submodules are imported where they are used, so that importing this package stays cheap.
"""
