"""Certification: a sound cascade of relaxations ending in a complete MILP check.

- ``cascade``: the per-sample work (natural, PGD, IBP, CROWN-IBP, DeepPoly,
  alpha-CROWN, MILP), batched over samples and separable, so that samples can be
  split across ranks;
- ``milp``: the complete check by mixed-integer programming (HiGHS via SciPy);
- ``report``: the per-sample CSV, the summary JSON and the printed table;
- ``tightness``: certified accuracy against eps per relaxation, its AUC, the plot.

``python -m gls_np certify`` and ``python -m gls_np tightness`` are the tools.
"""
