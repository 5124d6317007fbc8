"""The one `Settings`, read through the cached `get_settings()`: teacher fields included, and
config errors that name the variable to fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.config import get_settings
from services.errors import ConfigError


def test_teacher_settings_come_from_kpdd_variables(kpdd_env: Callable[..., None], tmp_path: Path) -> None:
    kpdd_env(
        sim_url="http://127.0.0.1:9", prices_file=str(tmp_path / "prices.json"), teacher_max_attempts="3"
    )
    settings = get_settings()
    assert settings.sim_url == "http://127.0.0.1:9"
    assert settings.prices_file == tmp_path / "prices.json"
    assert (settings.teacher_max_attempts, settings.teacher_backoff_s) == (3, 1.0)
    assert get_settings() is settings  # read once


def test_a_bad_value_names_its_variable(kpdd_env: Callable[..., None]) -> None:
    kpdd_env(teacher_timeout_s="0")
    with pytest.raises(ConfigError, match="KPDD_TEACHER_TIMEOUT_S"):
        get_settings()


def test_backoff_longer_than_its_maximum_names_both_variables(kpdd_env: Callable[..., None]) -> None:
    kpdd_env(teacher_backoff_s="10", teacher_backoff_max_s="5")
    with pytest.raises(
        ConfigError, match="KPDD_TEACHER_BACKOFF_MAX_S must be at least KPDD_TEACHER_BACKOFF_S"
    ):
        get_settings()
