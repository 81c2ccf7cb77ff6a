"""Safety layers: a PICNN cost model, convex in the action, and the filter that corrects any policy with it.

Imports torch, numpy, cvxpy and safetensors only — nothing else from safectrl (tests/test_imports.py).
"""
