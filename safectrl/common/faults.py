"""The warning every decision-maker gives, once, when it answers a bad reading or a failed step with its
fallback (a reading left out, an output held, a safe input): a category of its own, not RuntimeWarning, so
that it is told apart from numerical trouble (which the test suite turns into errors)."""

from __future__ import annotations


class FallbackWarning(UserWarning):
    """A decision-maker fell back (warned once per object; every case is counted in its record)."""
