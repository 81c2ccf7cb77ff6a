"""Safety layers that wrap any decision-maker: a PICNN cost model, convex in the action, and the filter that
corrects a policy with it (:mod:`~safectrl.safety.filter`); the predictive safety filter on the shared CasADi
model and the plant's own estimator (:mod:`~safectrl.safety.psf`).

Imports ``common``, ``models`` and ``controllers`` of safectrl (a safety layer wraps a controller and may use
one), never ``rl`` or ``studies`` (tests/test_imports.py).
"""
