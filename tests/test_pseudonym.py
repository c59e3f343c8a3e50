"""Keyed pseudonyms (storage.pseudonym)."""

import os
import re
import stat
import warnings

import pytest
from pydicom.uid import UID

from storage.pseudonym import ENV_VAR, PseudonymKeys, SecretKeyWarning, default_secret_path

KEY = "unit-test-secret-key-0123456789"


def test_patient_key_format_and_determinism():
    k = PseudonymKeys(KEY)
    a = k.patient_key("STS_008")
    assert re.fullmatch(r"P[A-Z2-7]{10}", a)
    assert a == PseudonymKeys(KEY).patient_key("STS_008")
    assert a != k.patient_key("STS_025")
    assert a != PseudonymKeys(KEY + "x").patient_key("STS_008")
    # domain separation: same string, different kinds -> unrelated keys
    assert k.study_key("1.2.3")[1:] != k.series_key("1.2.3")[1:]
    assert k.study_key("1.2.3").startswith("S") and k.series_key("1.2.3").startswith("R")


def test_volume_key():
    k = PseudonymKeys(KEY)
    s = k.series_key("1.2.840.1")
    assert k.volume_key(s, 0) == s + "v0"
    assert k.volume_key(s, 3) != k.volume_key(s, 0)
    with pytest.raises(ValueError, match="index"):
        k.volume_key(s, -1)
    with pytest.raises(ValueError, match="series_key"):
        k.volume_key("1.2.840.1", 0)


def test_date_shift_range_and_spread():
    k = PseudonymKeys(KEY)
    shifts = [k.date_shift_days(f"patient-{i}") for i in range(300)]
    assert all(-365 <= s <= -1 for s in shifts)
    assert len(set(shifts)) > 100  # spread, not a constant
    assert k.date_shift_days("A") == PseudonymKeys(KEY).date_shift_days("A")


def test_new_uid_is_valid_uuid_derived_uid():
    k = PseudonymKeys(KEY)
    old = "1.3.6.1.4.1.14519.5.2.1.5168.1900.123456789"
    new = k.new_uid(old)
    assert new.startswith("2.25.")
    assert UID(new).is_valid and len(new) <= 64
    digits = new[5:]
    assert digits[0] != "0" and len(digits) <= 39
    n = int(digits)
    assert (n >> 76) & 0xF == 8  # UUID version 8 nibble
    assert (n >> 62) & 0x3 == 2  # RFC variant
    assert k.new_uid(old) == new
    assert PseudonymKeys(KEY + "!").new_uid(old) != new
    assert k.new_uid(old + "1") != new


def test_secret_too_short():
    with pytest.raises(ValueError, match="at least 16"):
        PseudonymKeys("short")


def test_from_env_variable(tmp_path):
    env = {ENV_VAR: KEY, "XDG_CONFIG_HOME": str(tmp_path)}
    k = PseudonymKeys.from_env(env)
    assert k.patient_key("x") == PseudonymKeys(KEY).patient_key("x")
    assert not (tmp_path / "medflow").exists()
    with pytest.raises(ValueError, match=ENV_VAR):
        PseudonymKeys.from_env({ENV_VAR: "short"})


def test_from_env_generates_file_once(tmp_path, capsys):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k1 = PseudonymKeys.from_env(env)
    path = default_secret_path(env)
    assert path == tmp_path / "cfg" / "medflow" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    msgs = [str(w.message) for w in caught if issubclass(w.category, SecretKeyWarning)]
    assert len(msgs) == 1 and str(path) in msgs[0] and secret not in msgs[0]
    assert secret not in repr(k1)
    with warnings.catch_warnings(record=True) as caught2:
        warnings.simplefilter("always")
        k2 = PseudonymKeys.from_env(env)
    assert not [w for w in caught2 if issubclass(w.category, SecretKeyWarning)]
    assert k1.patient_key("abc") == k2.patient_key("abc")
    out = capsys.readouterr()
    assert secret not in out.out + out.err


def test_from_env_refuses_world_readable_file(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PseudonymKeys.from_env(env)
    os.chmod(default_secret_path(env), 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        PseudonymKeys.from_env(env)


def test_home_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_secret_path({}) == tmp_path / ".config" / "medflow" / "secret.key"
