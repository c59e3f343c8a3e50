"""DIMSE client (pynetdicom): C-FIND study/series/image levels, C-MOVE to our own C-STORE SCP or C-GET, C-STORE.

Every received instance is handed, as encoded bytes (file meta included), to a sink
callable; completeness is decided by the caller from the instances that actually
arrived, never from the C-MOVE/C-GET status (which reports success on partial
transfers with some PACS).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

from pydicom.dataset import Dataset

from storage.pacs.model import ExpectedSeries, PacsError, PullPlan, TransientPacsError
from storage.pacs.uri import PacsQuery, PacsSource

Sink = Callable[[bytes], None]

_PENDING = (0xFF00, 0xFF01)
_MOVE_DESTINATION_UNKNOWN = 0xA801


def _ae(source: PacsSource, timeout_s: float):
    from pynetdicom import AE

    ae = AE(ae_title=source.calling_aet)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.maximum_pdu_size = 0  # no limit on what we receive
    return ae


@contextlib.contextmanager
def _associate(ae, source: PacsSource, *, what: str, **kwargs) -> Iterator:
    assoc = ae.associate(source.host, source.port, ae_title=source.called_aet, **kwargs)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise PacsError(f"{what}: the PACS {source.called_aet} at {source.host}:{source.port} rejected the "
                            f"association (check its AE title and that it accepts calling AE {source.calling_aet})")
        raise TransientPacsError(f"{what}: no association with {source.host}:{source.port} "
                                 "(connection refused, aborted or timed out)")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _find(assoc, identifier: Dataset, model: str, *, what: str) -> list[Dataset]:
    out = []
    for status, ident in assoc.send_c_find(identifier, model):
        if status is None or "Status" not in status:
            raise TransientPacsError(f"{what}: the PACS stopped answering (no C-FIND response)")
        code = int(status.Status)
        if code in _PENDING and ident is not None:
            out.append(ident)
        elif code not in _PENDING and code != 0x0000:
            raise PacsError(f"{what}: C-FIND failed with status 0x{code:04X}")
    return out


def _s(ds: Dataset, name: str) -> str:
    v = ds.get(name, "")
    return str(v).strip() if v is not None else ""


def query(source: PacsSource, *, timeout_s: float) -> PullPlan:
    """C-FIND at study, series and image level (Study Root); the expected instances of every matching study."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = _ae(source, timeout_s)
    ae.add_requested_context(FIND)
    q: PacsQuery = source.query
    plan = PullPlan()
    with _associate(ae, source, what="C-FIND") as assoc:
        study_uids: list[str] = []
        for uid in (q.study_uids or ("",)):
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            ident.StudyInstanceUID = uid
            ident.PatientID = q.patient
            ident.StudyDate = q.study_date
            ident.AccessionNumber = q.accession
            ident.ModalitiesInStudy = q.modality
            ident.NumberOfStudyRelatedInstances = ""
            for r in _find(assoc, ident, FIND, what="C-FIND (study level)"):
                u = _s(r, "StudyInstanceUID")
                if u and u not in study_uids:
                    study_uids.append(u)
        for study_uid in study_uids:
            ident = Dataset()
            ident.QueryRetrieveLevel = "SERIES"
            ident.StudyInstanceUID = study_uid
            ident.SeriesInstanceUID = ""
            ident.Modality = ""
            ident.NumberOfSeriesRelatedInstances = ""
            series = []
            for r in _find(assoc, ident, FIND, what="C-FIND (series level)"):
                n = _s(r, "NumberOfSeriesRelatedInstances")
                series.append(ExpectedSeries(study_uid=study_uid, series_uid=_s(r, "SeriesInstanceUID"),
                                             modality=_s(r, "Modality"), count=int(n) if n.isdigit() else None))
            for s in series:
                ident = Dataset()
                ident.QueryRetrieveLevel = "IMAGE"
                ident.StudyInstanceUID = study_uid
                ident.SeriesInstanceUID = s.series_uid
                ident.SOPInstanceUID = ""
                ident.SOPClassUID = ""
                for r in _find(assoc, ident, FIND, what="C-FIND (image level)"):
                    s.instances[_s(r, "SOPInstanceUID")] = _s(r, "SOPClassUID")
            plan.studies[study_uid] = series
    return plan


def _store_handler(sink: Sink):
    def handle(event) -> int:
        try:
            sink(event.encoded_dataset())
        except Exception:  # noqa: BLE001 - any failure to keep the instance is reported to the sender
            return 0xA700  # Out of Resources: the PACS counts a failed sub-operation
        return 0x0000
    return handle


def _check_move_status(responses: Iterable, *, what: str, calling_aet: str) -> None:
    for status, _ident in responses:
        if status is None or "Status" not in status:
            raise TransientPacsError(f"{what}: the PACS stopped answering (no response)")
        code = int(status.Status)
        if code == _MOVE_DESTINATION_UNKNOWN:
            raise PacsError(f"{what}: the PACS does not know our AE title {calling_aet} as a move destination "
                            "(register it there with our host and port, or use retrieve=get)")
        # any other final status (success, warning, failure) is not trusted: arrivals are counted


class DimseRetriever:
    """Retrieves series/instances by C-MOVE (our SCP runs while the retriever is open) or C-GET."""

    def __init__(self, source: PacsSource, sink: Sink, *, timeout_s: float, scp_bind_address: str,
                 sop_classes: Iterable[str] = ()):
        self.source = source
        self.sink = sink
        self.timeout_s = timeout_s
        self.bind = scp_bind_address
        self.sop_classes = sorted({c for c in sop_classes if c})
        self._server = None
        self._lock = threading.Lock()

    def __enter__(self) -> DimseRetriever:
        if self.source.retrieve == "move":
            from pynetdicom import AllStoragePresentationContexts, evt

            ae = _ae(self.source, self.timeout_s)
            ae.supported_contexts = AllStoragePresentationContexts
            try:
                self._server = ae.start_server((self.bind, self.source.scp_port), block=False,
                                               evt_handlers=[(evt.EVT_C_STORE, _store_handler(self.sink))])
            except OSError as exc:
                raise PacsError(f"cannot start our C-STORE SCP on {self.bind}:{self.source.scp_port} "
                                f"({exc.strerror or exc}); choose another port with ?port=") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _identifier(self, level: str, study: str, series: str, sops: list[str] | None) -> Dataset:
        ident = Dataset()
        ident.QueryRetrieveLevel = level
        ident.StudyInstanceUID = study
        ident.SeriesInstanceUID = series
        if sops is not None:
            ident.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
        return ident

    def _retrieve(self, ident: Dataset, what: str) -> None:
        if self.source.retrieve == "move":
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

            ae = _ae(self.source, self.timeout_s)
            ae.add_requested_context(MOVE)
            with _associate(ae, self.source, what=what) as assoc:
                _check_move_status(assoc.send_c_move(ident, self.source.calling_aet, MOVE), what=what,
                                   calling_aet=self.source.calling_aet)
            return
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        ae = _ae(self.source, self.timeout_s)
        ae.add_requested_context(GET)
        roles = []
        for uid in self.sop_classes[:120]:
            ae.add_requested_context(uid)
            roles.append(build_role(uid, scp_role=True))
        with _associate(ae, self.source, what=what, ext_neg=roles,
                        evt_handlers=[(evt.EVT_C_STORE, _store_handler(self.sink))]) as assoc:
            for status, _ident in assoc.send_c_get(ident, GET):
                if status is None or "Status" not in status:
                    raise TransientPacsError(f"{what}: the PACS stopped answering (no response)")

    def series(self, s: ExpectedSeries) -> None:
        self._retrieve(self._identifier("SERIES", s.study_uid, s.series_uid, None), "retrieve (series)")

    def instances(self, s: ExpectedSeries, sop_uids: list[str]) -> None:
        for uid in sop_uids:  # one at a time: list matching at IMAGE level is optional for a PACS
            self._retrieve(self._identifier("IMAGE", s.study_uid, s.series_uid, [uid]), "retrieve (instance)")


def store(source: PacsSource, datasets: list[Dataset], *, timeout_s: float) -> int:
    """C-STORE ``datasets`` to the PACS; returns how many it accepted (raises when one is refused)."""
    ae = _ae(source, timeout_s)
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    if len(classes) > 120:
        raise PacsError("C-STORE: more than 120 SOP classes in one batch")
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    for uid in classes:
        tsyntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == uid}
                           | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        ae.add_requested_context(uid, tsyntaxes)
    n = 0
    with _associate(ae, source, what="C-STORE") as assoc:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status is None or "Status" not in status:
                raise TransientPacsError("C-STORE: the PACS stopped answering")
            code = int(status.Status)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise PacsError(f"C-STORE refused an instance with status 0x{code:04X}")
            n += 1
    return n
