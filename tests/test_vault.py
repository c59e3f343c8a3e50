"""Encrypted pseudonym vault (storage.vault)."""

import base64
import multiprocessing as mp

import pytest

from storage.pseudonym import PseudonymKeys
from storage.vault import Vault, VaultError

KEY = "unit-test-secret-key-0123456789"


def test_roundtrip_and_reidentify(tmp_path):
    keys = PseudonymKeys(KEY)
    v = Vault(tmp_path, keys)
    pk = keys.patient_key("STS_008")
    v.record("patient", "STS_008", pk)
    v.record("patient", "STS_008", pk)  # idempotent
    assert v.lookup_pseudonym("patient", "STS_008") == pk
    assert v.reidentify("patient", pk) == "STS_008"
    assert v.reidentify("patient", "PNOPE") is None
    assert v.lookup_pseudonym("series", "STS_008") is None
    # a second object (another process) reads the same map
    assert Vault(tmp_path, PseudonymKeys(KEY)).reidentify("patient", pk) == "STS_008"
    assert Vault(tmp_path, keys).kinds() == {"patient": 1}


def test_file_holds_no_plaintext(tmp_path):
    keys = PseudonymKeys(KEY)
    v = Vault(tmp_path, keys)
    originals = ["Doe^Jane-CANARY-7731", "1.2.840.113619.2.55.3.604688119.969.1268071029.320", "MRN0048213"]
    for i, o in enumerate(originals):
        v.record("patient" if i != 1 else "study_uid", o, keys.patient_key(o))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"pseudonyms.enc", "pseudonyms.lock"}
    for p in files:
        data = p.read_bytes()
        for o in originals:
            for needle in (o.encode(), o.encode("utf-16-le")):
                assert needle not in data
            # and not in base64 (any alignment)
            for shift in range(3):
                b64 = base64.b64encode(b"\0" * shift + o.encode())[4 if shift else 0:][:16]
                assert b64 not in data
            # pseudonyms are not in clear either (the map is encrypted whole)
            assert keys.patient_key(o).encode() not in data


def test_wrong_key_is_reported(tmp_path):
    Vault(tmp_path, PseudonymKeys(KEY)).record("patient", "A", "PAAAAAAAAAA")
    with pytest.raises(VaultError, match="different secret key"):
        Vault(tmp_path, PseudonymKeys(KEY + "other")).reidentify("patient", "PAAAAAAAAAA")


def test_tampered_file_is_rejected(tmp_path):
    v = Vault(tmp_path, PseudonymKeys(KEY))
    v.record("patient", "A", "PAAAAAAAAAA")
    raw = bytearray(v.path.read_bytes())
    raw[-10] = ord("A") if raw[-10] != ord("A") else ord("B")
    v.path.write_bytes(bytes(raw))
    with pytest.raises(VaultError, match="authentication"):
        Vault(tmp_path, PseudonymKeys(KEY)).reidentify("patient", "PAAAAAAAAAA")


def test_conflicts_raise_without_values(tmp_path):
    v = Vault(tmp_path, PseudonymKeys(KEY))
    v.record("patient", "SECRET-ID", "P1")
    with pytest.raises(VaultError) as e:
        v.record("patient", "SECRET-ID", "P2")
    assert "SECRET-ID" not in str(e.value)
    with pytest.raises(VaultError):
        v.record("patient", "OTHER", "P1")
    with pytest.raises(ValueError, match="kind"):
        v.record("Patient Name", "x", "y")


def test_padded_ids_are_one_original(tmp_path):
    """Soak finding: a damaged copy whose PatientID differs only by DICOM's pad space got the same
    pseudonym (keys strip the value) but was recorded as another original: the whole ingest failed."""
    keys = PseudonymKeys(KEY)
    v = Vault(tmp_path, keys)
    assert keys.patient_key("STS_008 ") == keys.patient_key("STS_008")
    assert v.record_many("patient", [("STS_008", keys.patient_key("STS_008")),
                                     ("STS_008 ", keys.patient_key("STS_008 "))]) == 1
    v.record("patient", " STS_008", keys.patient_key(" STS_008"))
    assert v.lookup_pseudonym("patient", "STS_008 ") == keys.patient_key("STS_008")
    assert v.reidentify("patient", keys.patient_key("STS_008")) == "STS_008"
    assert v.kinds() == {"patient": 1}
    v.record("study_uid", "1.2.3 ", "2.25.1")  # kinds not keyed on stripped text keep the value as given
    assert v.lookup_pseudonym("study_uid", "1.2.3") is None


def _writer(root, prefix, n):
    v = Vault(root, PseudonymKeys(KEY))
    for i in range(n):
        v.record("patient", f"{prefix}{i}", f"{prefix}-pseudo-{i}")


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, p, 25)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    v = Vault(tmp_path, PseudonymKeys(KEY))
    assert v.kinds() == {"patient": 75}
    assert v.reidentify("patient", "b-pseudo-24") == "b24"
