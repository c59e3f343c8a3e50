"""PACS sources as URIs: ``dimse://AET@host:port?...`` and ``dicomweb+http(s)://host/path?...``.

The same ``source`` field that takes a folder takes a PACS query::

    dimse://ORTHANC@pacs.example:104?study_date=yesterday&modality=CT
    dimse://ORTHANC@127.0.0.1:4242?patient=P123&aet=MEDFLOW&port=11113&retrieve=get
    dicomweb+https://pacs.example/dicom-web?study_date=-7d..today&accession=A1

Query keys (all optional, combined with AND):

``patient``      Patient ID
``study_date``   one date or a range ``FROM..TO`` (either side may be empty); a date is ``YYYYMMDD``,
                 ``YYYY-MM-DD``, ``today``, ``yesterday`` or ``-Nd`` (N days before today); the DICOM range
                 form ``YYYYMMDD-YYYYMMDD`` is accepted too
``modality``     studies that contain this modality (ModalitiesInStudy); the whole study is pulled, so its
                 RTSTRUCT/SEG come along
``accession``    Accession Number
``study_uid``    Study Instance UID (several separated by commas)

DIMSE-only keys: ``aet`` (our AE title, default ``MEDFLOW``), ``port`` (our C-STORE SCP port for C-MOVE,
default 11112), ``retrieve`` (``move``, the default, or ``get``).

Credentials never go in a URI (it ends up in configs, deployments and Prefect parameters): a URI with
``user:password@`` or a credential-like query key is refused. DICOMweb credentials come from the environment
(:func:`dicomweb_auth_from_env`). At least one query key is required (an unrestricted query would pull the
whole archive).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("dimse", "dicomweb+http", "dicomweb+https")
#: Query keys whose values identify a patient or a study (PS3.15 Table E.1-1: Patient ID, Accession Number,
#: Study Instance UID). A source URI is a run parameter that Prefect stores, so through a flow these keys take
#: ``env:VARIABLE`` (the value is read from the environment at pull time), never the literal value.
IDENTIFYING_KEYS = ("patient", "accession", "study_uid")
ENV_REF = "env:"
QUERY_KEYS = ("patient", "study_date", "modality", "accession", "study_uid")
DIMSE_KEYS = ("aet", "port", "retrieve")
_CREDENTIAL_KEYS = {"user", "username", "password", "passwd", "pwd", "token", "access_token", "apikey", "api_key",
                    "key", "secret", "auth", "authorization"}
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e ]{1,16}$")  # PS3.5 AE: 16 chars of the default repertoire, no backslash
_REL = re.compile(r"^-(\d{1,5})d$")
ENV_USER = "MEDFLOW_DICOMWEB_USER"
ENV_PASSWORD = "MEDFLOW_DICOMWEB_PASSWORD"
ENV_TOKEN = "MEDFLOW_DICOMWEB_TOKEN"


class PacsUriError(ValueError):
    """A PACS source URI that cannot be used; the message names the offending part (never credentials)."""


def is_pacs_uri(source: str) -> bool:
    """True when ``source`` is a PACS URI (``dimse://`` or ``dicomweb+http(s)://``) rather than a folder."""
    return isinstance(source, str) and source.split("://", 1)[0].lower() in SCHEMES and "://" in source


@dataclass(frozen=True)
class PacsQuery:
    """What to select: each field is a DICOM matching value (empty = no constraint)."""

    patient: str = ""
    study_date: str = ""  # DICOM DA range, resolved (no relative tokens left)
    modality: str = ""
    accession: str = ""
    study_uids: tuple[str, ...] = ()

    def canonical(self) -> str:
        return "&".join(f"{k}={v}" for k, v in (("patient", self.patient), ("study_date", self.study_date),
                                                 ("modality", self.modality), ("accession", self.accession),
                                                 ("study_uid", ",".join(self.study_uids))) if v)


@dataclass(frozen=True)
class PacsSource:
    """A parsed PACS source URI (no credentials: they are refused at parse time)."""

    protocol: str  # "dimse" | "dicomweb"
    host: str
    port: int | None
    query: PacsQuery
    called_aet: str = ""  # DIMSE: the PACS's AE title
    calling_aet: str = "MEDFLOW"  # DIMSE: ours
    scp_port: int = 11112  # DIMSE C-MOVE destination (our C-STORE SCP)
    retrieve: str = "move"  # DIMSE: move | get
    base_url: str = ""  # DICOMweb: http(s)://host[:port]/path
    extra: dict[str, str] = field(default_factory=dict)

    def canonical(self) -> str:
        """A stable text of the source (protocol, endpoint and resolved query): identifies a pull."""
        if self.protocol == "dimse":
            where = f"dimse://{self.called_aet}@{self.host}:{self.port}?retrieve={self.retrieve}"
        else:
            where = self.base_url
        return f"{where}#{self.query.canonical()}"


def resolve_date(token: str, *, today: _dt.date, key: str = "study_date") -> str:
    """One date token -> ``YYYYMMDD`` (``today``, ``yesterday``, ``-Nd``, ``YYYYMMDD``, ``YYYY-MM-DD``)."""
    t = token.strip().lower()
    if t == "today":
        return today.strftime("%Y%m%d")
    if t == "yesterday":
        return (today - _dt.timedelta(days=1)).strftime("%Y%m%d")
    m = _REL.match(t)
    if m:
        return (today - _dt.timedelta(days=int(m.group(1)))).strftime("%Y%m%d")
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(t, fmt).date().strftime("%Y%m%d")
        except ValueError:
            pass
    raise PacsUriError(f"{key}={token!r}: not a date (use YYYYMMDD, YYYY-MM-DD, today, yesterday or -Nd)")


def resolve_date_range(value: str, *, today: _dt.date | None = None) -> str:
    """A ``study_date`` value -> a DICOM DA matching value (``D``, ``D1-D2``, ``D1-`` or ``-D2``).

    Relative tokens are resolved against ``today`` (default: the local date now), so a
    nightly deployment with ``study_date=yesterday`` selects the previous calendar day.
    """
    today = today or _dt.date.today()
    v = value.strip()
    if ".." in v:
        lo, hi = v.split("..", 1)
    elif re.fullmatch(r"\d{8}-\d{8}|\d{8}-|-\d{8}", v):
        lo, hi = v.split("-", 1)
    else:
        return resolve_date(v, today=today)
    lo_d = resolve_date(lo, today=today) if lo.strip() else ""
    hi_d = resolve_date(hi, today=today) if hi.strip() else ""
    if not lo_d and not hi_d:
        raise PacsUriError(f"study_date={value!r}: an empty range")
    if lo_d and hi_d and lo_d > hi_d:
        raise PacsUriError(f"study_date={value!r}: the range starts after it ends ({lo_d} > {hi_d})")
    return f"{lo_d}-{hi_d}" if lo_d != hi_d else lo_d


def _refuse_credentials(uri: str, netloc: str, protocol: str) -> None:
    userinfo = netloc.rpartition("@")[0] if "@" in netloc else ""
    if protocol == "dicomweb" and userinfo:
        raise PacsUriError("PACS source URI carries credentials (user@ or user:password@): give them in the "
                           f"environment ({ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}), never in the URI")
    if protocol == "dimse" and ":" in userinfo:
        raise PacsUriError("PACS source URI carries a password (AET:secret@): DIMSE uses no password; "
                           "the part before @ is the PACS's AE title")


def parse_source(uri: str, *, today: _dt.date | None = None, require_query: bool = True) -> PacsSource:
    """Parse and validate a PACS source URI; relative dates are resolved against ``today``.

    ``require_query=False`` accepts a URI without query keys (a write-back target).

    Raises
    ------
    PacsUriError
        Unknown scheme or query key, credentials in the URI, a bad AE title/port/date, or no query key.
    """
    if not is_pacs_uri(uri):
        raise PacsUriError(f"source {uri.split('?', 1)[0]!r} is not a PACS URI (dimse:// or dicomweb+http(s)://)")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    protocol = "dimse" if scheme == "dimse" else "dicomweb"
    _refuse_credentials(uri, parts.netloc, protocol)
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    values: dict[str, str] = {}
    allowed = QUERY_KEYS + (DIMSE_KEYS if protocol == "dimse" else ())
    for k, v in pairs:
        key = k.strip().lower()
        if key in _CREDENTIAL_KEYS:
            raise PacsUriError(f"PACS source URI has a credential-like key {key!r}: credentials come from the "
                               f"environment ({ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}), never the URI")
        if key not in allowed:
            raise PacsUriError(f"PACS source URI: unknown query key {key!r} (allowed: {', '.join(allowed)})")
        if key in values:
            raise PacsUriError(f"PACS source URI: query key {key!r} given twice")
        values[key] = _dereference(key, v.strip())
    uids = tuple(u.strip() for u in values.get("study_uid", "").split(",") if u.strip())
    for u in uids:
        if not re.fullmatch(r"[0-9.]{1,64}", u):
            raise PacsUriError("study_uid: not a DICOM UID (digits and dots, at most 64 characters)")
    query = PacsQuery(patient=values.get("patient", ""),
                      study_date=resolve_date_range(values["study_date"], today=today) if values.get("study_date")
                      else "",
                      modality=values.get("modality", "").upper(), accession=values.get("accession", ""),
                      study_uids=uids)
    if require_query and not query.canonical():
        raise PacsUriError("PACS source URI has no query key: give at least one of " + ", ".join(QUERY_KEYS)
                           + " (an unrestricted query would pull the whole archive)")
    try:
        port = parts.port
    except ValueError:
        raise PacsUriError("PACS source URI: the port is not a number in 1..65535") from None
    host = parts.hostname or ""
    if not host:
        raise PacsUriError("PACS source URI: no host")
    if protocol == "dimse":
        aet = unquote(parts.netloc.rpartition("@")[0]) if "@" in parts.netloc else ""
        if not _AET.match(aet):
            raise PacsUriError("dimse:// source needs the PACS's AE title before @ (1-16 characters), "
                               "e.g. dimse://ORTHANC@host:4242")
        if port is None:
            raise PacsUriError("dimse:// source needs a port (dimse://AET@host:PORT)")
        calling = values.get("aet", "MEDFLOW")
        if not _AET.match(calling):
            raise PacsUriError(f"aet={calling!r}: not an AE title (1-16 characters)")
        try:
            scp_port = int(values.get("port", "11112"))
        except ValueError:
            raise PacsUriError(f"port={values.get('port')!r}: not a number") from None
        if not 1 <= scp_port <= 65535:
            raise PacsUriError(f"port={scp_port}: not in 1..65535")
        retrieve = values.get("retrieve", "move").lower()
        if retrieve not in ("move", "get"):
            raise PacsUriError(f"retrieve={retrieve!r}: use move or get")
        return PacsSource(protocol="dimse", host=host, port=port, query=query, called_aet=aet.strip(),
                          calling_aet=calling.strip(), scp_port=scp_port, retrieve=retrieve)
    http = scheme.split("+", 1)[1]
    netloc = f"{host}:{port}" if port else host
    base = f"{http}://{netloc}{parts.path.rstrip('/')}"
    return PacsSource(protocol="dicomweb", host=host, port=port, query=query, base_url=base)


def _dereference(key: str, value: str) -> str:
    """``env:NAME`` -> the value of environment variable NAME (only for :data:`IDENTIFYING_KEYS`)."""
    if not value.startswith(ENV_REF):
        return value
    name = value[len(ENV_REF):]
    if key not in IDENTIFYING_KEYS:
        raise PacsUriError(f"{key}={value!r}: only {', '.join(IDENTIFYING_KEYS)} take env: references")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise PacsUriError(f"{key}=env:...: {name!r} is not an environment variable name")
    resolved = os.environ.get(name, "").strip()
    if not resolved:
        raise PacsUriError(f"{key}=env:{name}: the environment variable {name} is not set")
    return resolved


def identifying_literals(uri: str) -> list[str]:
    """Query keys of ``uri`` that carry a literal identifying value (Patient ID, Accession Number, Study UID).

    A run parameter ends up in Prefect's database, so :func:`check_run_parameter` refuses them there.
    """
    if not is_pacs_uri(uri):
        return []
    pairs = parse_qsl(urlsplit(uri).query, keep_blank_values=True)
    return sorted({k.strip().lower() for k, v in pairs
                   if k.strip().lower() in IDENTIFYING_KEYS and v.strip() and not v.strip().startswith(ENV_REF)})


def check_run_parameter(uri: str) -> None:
    """Refuse a PACS URI that would put an identifying value into Prefect's run parameters.

    Raises
    ------
    PacsUriError
        Naming the query key (never its value) and the ``env:`` form to use instead.
    """
    bad = identifying_literals(uri)
    if bad:
        raise PacsUriError(
            f"PACS source URI has an identifying value for {', '.join(bad)}: run parameters are stored by Prefect, "
            f"so give it from the environment instead, e.g. {bad[0]}=env:MEDFLOW_PACS_{bad[0].upper()} "
            "(or query by study_date/modality)")


def redacted(uri: str) -> str:
    """The URI without its query (which may hold a patient ID): safe to name in an error message."""
    return uri.split("?", 1)[0] if is_pacs_uri(uri) else "<source>"


def dicomweb_auth_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Credentials for DICOMweb from the environment: ``{"token": ...}``, ``{"user":..., "password":...}`` or {}.

    ``MEDFLOW_DICOMWEB_TOKEN`` (a bearer token) wins over ``MEDFLOW_DICOMWEB_USER`` +
    ``MEDFLOW_DICOMWEB_PASSWORD`` (HTTP basic). A user without a password is an error.
    """
    env = os.environ if env is None else env
    token = env.get(ENV_TOKEN, "")
    if token:
        return {"token": token}
    user, password = env.get(ENV_USER, ""), env.get(ENV_PASSWORD, "")
    if user and not password:
        raise PacsUriError(f"{ENV_USER} is set but {ENV_PASSWORD} is not")
    if password and not user:
        raise PacsUriError(f"{ENV_PASSWORD} is set but {ENV_USER} is not")
    return {"user": user, "password": password} if user else {}
