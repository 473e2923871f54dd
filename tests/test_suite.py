"""The suite's own rule for optional dependencies: a test that needs one skips, saying why, and fails
instead where .ci/run installed it ($VIDANOM_REQUIRE), so that a skip never hides a broken install."""

from __future__ import annotations

import pytest
from conftest import missing


def test_a_missing_dependency_skips_with_its_name_unless_it_is_required(monkeypatch):
    monkeypatch.delenv("VIDANOM_REQUIRE", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^\[chromium\] not there"):
        missing("chromium", "not there")
    monkeypatch.setenv("VIDANOM_REQUIRE", "ray,chromium")
    with pytest.raises(pytest.fail.Exception, match="not there.*VIDANOM_REQUIRE says chromium was installed"):
        missing("chromium", "not there")
    with pytest.raises(pytest.skip.Exception):
        missing("gstreamer", "not there")  # installed by nobody here: a skip
