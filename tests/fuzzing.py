"""Hypothesis settings shared by the property-based suites (the fuzzed ingest,
tests/integration/ingest/test_ingest_fuzz.py, and the fuzzed compiler,
tests/unit/api/test_compiler_fuzz.py).

CI runs the `tidings-ci` profile: derandomized (the same examples every run, so a
red build is reproducible and a green one stays green for the same code) and
sized to the counts the suites promise. For a longer, random hunt:

    export TIDINGS_FUZZ_PROFILE=tidings-deep
    bash hack/test.sh tests/integration/ingest/test_ingest_fuzz.py
    TIDINGS_FUZZ_SCALE=20 bash hack/test.sh tests/unit/api/test_compiler_fuzz.py

`tidings-deep` draws new examples every run (and keeps failing ones in
.hypothesis/ to replay first next time); TIDINGS_FUZZ_SCALE multiplies the
number of examples (default 10 under tidings-deep, 1 under tidings-ci).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("TIDINGS_FUZZ_PROFILE", "tidings-ci")
DEEP = PROFILE == "tidings-deep"
SCALE = float(os.environ.get("TIDINGS_FUZZ_SCALE", "10" if DEEP else "1"))

_COMMON = {
    "deadline": None,  # a loaded 2-core machine: timing is not the property under test
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
    "print_blob": True,
}


def examples(count: int) -> settings:
    """Settings for a suite of `count` examples under the current profile."""
    if DEEP:
        return settings(max_examples=int(count * SCALE), derandomize=False, **_COMMON)  # type: ignore[arg-type]
    return settings(
        max_examples=int(count * SCALE),
        derandomize=True,
        database=None,
        **_COMMON,  # type: ignore[arg-type]
    )
