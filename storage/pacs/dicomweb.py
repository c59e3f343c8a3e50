"""DICOMweb client (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Credentials come from the environment only (:func:`storage.pacs.uri.dicomweb_auth_from_env`).
HTTP 401/403 is a configuration error (not retried); connection errors, timeouts and 5xx are
transient; 404 on retrieve means the instance is gone (it stays missing).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset

from storage.pacs.model import ExpectedSeries, PacsError, PullPlan, TransientPacsError
from storage.pacs.uri import ENV_PASSWORD, ENV_TOKEN, ENV_USER, PacsSource, dicomweb_auth_from_env

Sink = Callable[[bytes], None]


def client(source: PacsSource, *, timeout_s: float):
    """A :class:`dicomweb_client.api.DICOMwebClient` for ``source`` with the environment's credentials."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    auth = dicomweb_auth_from_env()
    headers = {}
    if "token" in auth:
        headers["Authorization"] = f"Bearer {auth['token']}"
    elif auth:
        session.auth = (auth["user"], auth["password"])
    return DICOMwebClient(url=source.base_url, session=session, headers=headers or None, timeout=timeout_s)


def _classify(exc: Exception, what: str) -> Exception:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return PacsError(f"{what}: the DICOMweb server refused our credentials (HTTP {code}); set "
                             f"{ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}")
        if code >= 500 or code in (408, 429):
            return TransientPacsError(f"{what}: HTTP {code} from the DICOMweb server")
        return PacsError(f"{what}: HTTP {code} from the DICOMweb server")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return TransientPacsError(f"{what}: {type(exc).__name__} talking to the DICOMweb server")
    return exc


def _val(item: dict, tag: str) -> str:
    v = (item.get(tag) or {}).get("Value") or [""]
    return str(v[0]).strip()


_PAGE = 500


def _search_all(search, uid_tag: str, **kwargs) -> list[dict]:
    """All results of a QIDO-RS search, paged with limit/offset; stops when a page brings nothing new
    (some servers ignore ``offset``, which would make "until an empty page" loop for ever)."""
    out: dict[str, dict] = {}
    offset = 0
    while True:
        page = search(limit=_PAGE, offset=offset, **kwargs)
        new = 0
        for item in page:
            uid = _val(item, uid_tag)
            if uid and uid not in out:
                out[uid] = item
                new += 1
        if len(page) < _PAGE or new == 0:
            return list(out.values())
        offset += len(page)


def query(source: PacsSource, *, timeout_s: float) -> PullPlan:
    """QIDO-RS studies -> series -> instances: the expected instances of every matching study."""
    c = client(source, timeout_s=timeout_s)
    q = source.query
    plan = PullPlan()
    try:
        studies: list[str] = []
        for uid in (q.study_uids or ("",)):
            filters = {k: v for k, v in (("StudyInstanceUID", uid), ("PatientID", q.patient),
                                         ("StudyDate", q.study_date), ("AccessionNumber", q.accession),
                                         ("ModalitiesInStudy", q.modality)) if v}
            for item in _search_all(c.search_for_studies, "0020000D", search_filters=filters):
                u = _val(item, "0020000D")
                if u and u not in studies:
                    studies.append(u)
        for study_uid in studies:
            series = []
            for item in _search_all(c.search_for_series, "0020000E", study_instance_uid=study_uid,
                                    fields=["NumberOfSeriesRelatedInstances", "Modality"]):
                n = _val(item, "00201209")
                series.append(ExpectedSeries(study_uid=study_uid, series_uid=_val(item, "0020000E"),
                                             modality=_val(item, "00080060"), count=int(n) if n.isdigit() else None))
            for s in series:
                for item in _search_all(c.search_for_instances, "00080018", study_instance_uid=study_uid,
                                        series_instance_uid=s.series_uid, fields=["SOPClassUID"]):
                    s.instances[_val(item, "00080018")] = _val(item, "00080016")
            plan.studies[study_uid] = series
    except Exception as exc:  # noqa: BLE001 - classified and re-raised
        raise _classify(exc, "QIDO-RS") from None
    return plan


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class DicomwebRetriever:
    """WADO-RS retrieval of series (one multipart stream) and single instances."""

    def __init__(self, source: PacsSource, sink: Sink, *, timeout_s: float):
        self.client = client(source, timeout_s=timeout_s)
        self.sink = sink

    def __enter__(self) -> DicomwebRetriever:
        return self

    def __exit__(self, *exc) -> None:
        self.client._session.close()

    def series(self, s: ExpectedSeries) -> None:
        try:
            for ds in self.client.iter_series(s.study_uid, s.series_uid):
                self.sink(_encode(ds))
        except Exception as exc:  # noqa: BLE001
            err = _classify(exc, "WADO-RS (series)")
            if not (isinstance(err, PacsError) and "HTTP 404" in str(err)):
                raise err from None

    def instances(self, s: ExpectedSeries, sop_uids: list[str]) -> None:
        for uid in sop_uids:
            try:
                self.sink(_encode(self.client.retrieve_instance(s.study_uid, s.series_uid, uid)))
            except Exception as exc:  # noqa: BLE001
                err = _classify(exc, "WADO-RS (instance)")
                if isinstance(err, PacsError) and "HTTP 404" in str(err):
                    continue  # gone from the PACS: stays missing
                raise err from None


def store(source: PacsSource, datasets: list[Dataset], *, timeout_s: float) -> int:
    """STOW-RS ``datasets`` (grouped by study); returns how many were stored."""
    c = client(source, timeout_s=timeout_s)
    by_study: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    n = 0
    for study, group in by_study.items():
        try:
            c.store_instances(datasets=group, study_instance_uid=study)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, "STOW-RS") from None
        n += len(group)
    return n
