"""Hypothesis profiles: `dev`, quick, for the inner loop; `ci`, every property at its full count.

The profile is chosen by `HYPOTHESIS_PROFILE` (`dev` or `ci`); without it, `CI=true` (as CI runs
`make test`) picks `ci`, anything else `dev`. pytest's `--hypothesis-profile` overrides both.

A property that needs more (or fewer) examples than the profile's default names its `ci` count with
`examples(n)`: `n` in the ci profile, a fifth of it (at least 10) in dev.
"""

from __future__ import annotations

import os

from hypothesis import settings

CI, DEV = "ci", "dev"
DEV_SHARE = 5  # dev runs one example in DEV_SHARE of ci's
DEV_MIN = 10

settings.register_profile(CI, max_examples=100, deadline=None, print_blob=True)
settings.register_profile(DEV, max_examples=100 // DEV_SHARE, deadline=None)


def chosen() -> str:
    """The profile the environment asks for."""
    named = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if named:
        return named
    return CI if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes") else DEV


def load() -> str:
    profile = chosen()
    settings.load_profile(profile)
    return profile


def examples(ci: int) -> int:
    """`ci` examples in the ci profile; in dev (or any other) a fifth of it, at least DEV_MIN."""
    if settings.get_current_profile_name() == CI:
        return ci
    return max(DEV_MIN, ci // DEV_SHARE)
