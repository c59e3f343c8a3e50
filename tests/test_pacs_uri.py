"""PACS source URIs: query keys, relative dates, credentials refused (no server needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from storage.pacs.uri import (
    PacsUriError,
    dicomweb_auth_from_env,
    is_pacs_uri,
    parse_source,
    resolve_date_range,
)

TODAY = dt.date(2026, 3, 1)


def test_dimse_uri_parts():
    s = parse_source("dimse://ORTHANC@10.0.0.5:4242?patient=P1&modality=ct&aet=MF&port=11113&retrieve=get",
                     today=TODAY)
    assert (s.protocol, s.called_aet, s.host, s.port, s.calling_aet, s.scp_port, s.retrieve) == (
        "dimse", "ORTHANC", "10.0.0.5", 4242, "MF", 11113, "get")
    assert (s.query.patient, s.query.modality) == ("P1", "CT")


def test_dicomweb_uri_and_relative_dates():
    s = parse_source("dicomweb+https://pacs.example:8443/dicom-web/?study_date=yesterday&accession=A7", today=TODAY)
    assert s.base_url == "https://pacs.example:8443/dicom-web"
    assert (s.query.study_date, s.query.accession) == ("20260228", "A7")
    assert resolve_date_range("-7d..today", today=TODAY) == "20260222-20260301"
    assert resolve_date_range("2026-01-01..", today=TODAY) == "20260101-"
    assert resolve_date_range("20250101-20250131", today=TODAY) == "20250101-20250131"
    assert resolve_date_range("-1d", today=TODAY) == "20260228"


@pytest.mark.parametrize("uri, match", [
    ("dicomweb+https://alice:s3cr3t-value@pacs/dicom-web?patient=1", "environment"),
    ("dicomweb+https://alice@pacs/dicom-web?patient=1", "environment"),
    ("dicomweb+https://pacs/dicom-web?patient=1&token=t0k3n-value", "credential"),
    ("dimse://ORTHANC:pw-9x7@pacs:104?patient=1", "password"),
    ("dimse://pacs:104?patient=1", "AE title"),
    ("dimse://ORTHANC@pacs?patient=1", "port"),
    ("dimse://ORTHANC@pacs:104", "no query key"),
    ("dimse://ORTHANC@pacs:104?colour=red", "unknown query key 'colour'"),
    ("dimse://ORTHANC@pacs:104?study_date=tomorrow", "study_date='tomorrow'"),
    ("dimse://ORTHANC@pacs:104?study_date=20250201..20250101", "starts after it ends"),
    ("dimse://ORTHANC@pacs:104?patient=1&retrieve=push", "retrieve='push'"),
    ("dimse://ORTHANC@pacs:104?study_uid=1.2.abc", "not a DICOM UID"),
])
def test_bad_uris_are_refused_clearly(uri, match):
    with pytest.raises(PacsUriError, match=match) as err:
        parse_source(uri, today=TODAY)
    assert not any(v in str(err.value) for v in ("s3cr3t-value", "t0k3n-value", "pw-9x7", "alice"))


def test_is_pacs_uri_and_env_credentials():
    assert is_pacs_uri("dimse://A@h:1?patient=x") and is_pacs_uri("dicomweb+http://h/x?patient=1")
    assert not is_pacs_uri("/data/dicom") and not is_pacs_uri("http://h/x")
    assert dicomweb_auth_from_env({"MEDFLOW_DICOMWEB_TOKEN": "t", "MEDFLOW_DICOMWEB_USER": "u"}) == {"token": "t"}
    assert dicomweb_auth_from_env({"MEDFLOW_DICOMWEB_USER": "u", "MEDFLOW_DICOMWEB_PASSWORD": "p"}) == {
        "user": "u", "password": "p"}
    assert dicomweb_auth_from_env({}) == {}
    with pytest.raises(PacsUriError, match="MEDFLOW_DICOMWEB_PASSWORD"):
        dicomweb_auth_from_env({"MEDFLOW_DICOMWEB_USER": "u"})


def test_identifying_query_values_never_become_run_parameters(monkeypatch):
    """Patient ID / accession / study UID in a source URI would be stored by Prefect as a run parameter:
    the config refuses them (naming the key, not the value) and takes env: references instead."""
    from pydantic import ValidationError

    from medflow.config import PipelineConfig
    from storage.pacs.uri import identifying_literals

    for uri in ("dimse://ORTHANC@h:104?patient=CANARY-PID-77", "dicomweb+http://h/dw?accession=CANARY-ACC-9",
                "dicomweb+http://h/dw?study_uid=1.2.3.4"):
        with pytest.raises(ValidationError, match="environment") as err:
            PipelineConfig(source=uri, workspace="/tmp/ws")
        assert "CANARY" not in str(err.value) and "1.2.3.4" not in str(err.value)
    assert identifying_literals("dimse://O@h:1?patient=env:MEDFLOW_PACS_PATIENT&modality=CT") == []
    cfg = PipelineConfig(source="dimse://O@h:1?patient=env:MEDFLOW_PACS_PATIENT", workspace="/tmp/ws")
    with pytest.raises(PacsUriError, match="not set"):
        parse_source(cfg.source)
    monkeypatch.setenv("MEDFLOW_PACS_PATIENT", "STS_001")
    assert parse_source(cfg.source).query.patient == "STS_001"
    with pytest.raises(PacsUriError, match="only"):
        parse_source("dimse://O@h:1?modality=env:X")
    # a date/modality query is not identifying and stays as it is
    assert PipelineConfig(source="dimse://O@h:1?study_date=yesterday&modality=CT", workspace="/w").source
