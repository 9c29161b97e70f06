"""consumers/risk/settings.py: the `risk:` section of gateway.yaml."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from consumers.risk.engine import SIGNALS
from consumers.risk.settings import RiskSettings


def test_defaults() -> None:
    s = RiskSettings()
    assert (s.threshold, s.ttl_s) == (80, 900.0)
    assert all(getattr(s, name).enabled for name in SIGNALS)  # every signal has a section named after it


def test_a_yaml_section() -> None:
    text = """
    threshold: 70
    half_life_s: 120
    request_rate: {weight: 60, min_rate_per_s: 5}
    sensitive_sequence:
      outbound_tools: ["(?:^|_)send(?:_|$)", "telegram"]
    pii_in_payload: {enabled: false}
    """
    s = RiskSettings.model_validate(yaml.safe_load(text))
    assert (s.threshold, s.half_life_s, s.request_rate.weight, s.request_rate.min_rate_per_s) == (70, 120, 60, 5)
    assert s.sensitive_sequence.outbound_tools == ("(?:^|_)send(?:_|$)", "telegram")
    assert not s.pii_in_payload.enabled and s.injection_marker.enabled


@pytest.mark.parametrize(
    ("section", "problem"),
    [({"threshold": 0}, "threshold"), ({"thresold": 80}, "thresold"), ({"request_rate": {"weight": 120}}, "weight"),
     ({"request_rate": {"min_rate_per_s": 30, "full_rate_per_s": 10}}, "full_rate_per_s"),
     ({"auth_failures": {"min_failures": 10, "full_failures": 5}}, "full_failures"),
     ({"sensitive_sequence": {"sensitive_tools": ["read_(file"]}}, "not a valid regular expression"),
     ({"injection_marker": {"extra_patterns": ["(?P<"]}}, "not a valid regular expression")],
)  # fmt: skip
def test_problems_are_named(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RiskSettings.model_validate(section)


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        RiskSettings().threshold = 10  # type: ignore[misc]
