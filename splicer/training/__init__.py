"""Training: stage 1 (the SFTN teacher, or the standard teacher), stage 2 (distilling a
student from it), evaluation and side-by-side experiments.

Submodules are imported where they are used, so that importing this package stays cheap.
"""
