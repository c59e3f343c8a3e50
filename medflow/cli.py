"""``medflow`` command line: run the pipeline, ingest, export, features, filters, de-identification."""

from __future__ import annotations

import functools
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from medflow import runtime

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="medflow: DICOM to volumes, masks, IBSI features, predictions and a report.")
console = Console(stderr=True)
out = Console(soft_wrap=True)

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample" / "ibsi_sts" / "dicom"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]medflow: {message}[/red]", highlight=False)
    raise typer.Exit(code)


def _check_separate(source: pathlib.Path, workspace: pathlib.Path) -> None:
    """Refuse a workspace inside the source folder, or a source inside the workspace (it would ingest itself).

    Also makes everything this process writes private from here on (umask 077, see storage.workspace):
    flow hooks write into the workspace before the flow body's ``Workspace.ensure()``.
    """
    import os

    from storage.workspace import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    src, ws = source.resolve(), workspace.resolve()
    if ws == src or ws.is_relative_to(src):
        _fail(f"workspace {workspace} is inside the source folder {source}: choose a workspace outside it")
    if src.is_relative_to(ws):
        _fail(f"source folder {source} is inside the workspace {workspace}: choose a source outside it")


def _run_pipeline(config, *, verbose: bool) -> dict:
    """Run the pipeline flow with a live progress line; returns its summary."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from flows import pipeline as pipeline_module

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=not verbose) as progress:
        bar = progress.add_task("starting Prefect (ephemeral API)…", total=None)

        def on_task(name: str, state: str) -> None:
            progress.update(bar, description=f"{name}: {state.lower()}")

        pipeline_module.PROGRESS_HOOK = on_task
        try:
            from flows.served import pipeline as guarded  # + run registry: killed runs get marked Crashed

            return guarded(config)
        finally:
            pipeline_module.PROGRESS_HOOK = None


def _print_summary(summary: dict, elapsed: float) -> None:
    t = summary["tasks"]
    out.print(f"volumes: {summary['volumes']}  masks: {summary['masks']}  quarantined: {summary['quarantined']}")
    for r in summary["rois"]:
        out.print(f"  {r['volume_key']} {r['modality']}: {r['rois']} ROIs, {r['feature_values']} feature values")
    out.print(f"tasks: {t['tasks']} ({t['ran']} ran, {t['cached']} from cache) in {elapsed:.1f} s")
    out.print(f"report: {pathlib.Path(summary['workspace']) / summary['report']}")
    out.print(f"features: {pathlib.Path(summary['workspace']) / summary['features']}")


def _collector_paused(command: Callable[..., None]) -> Callable[..., None]:
    """A command that runs a flow: no cyclic garbage collection while it imports and starts Prefect.

    The flow resumes the collector with the start-up heap frozen (:func:`storage.memory.freeze_startup_heap`);
    a command that ends before its flow starts resumes it on its way out.
    """

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        from storage.memory import collector_paused

        with collector_paused():
            command(*args, **kwargs)

    return wrapped


def _start_worker_server() -> None:
    """The collection's worker server, started now: its imports overlap the configuration's and Prefect's start-up."""
    from storage.workers import start_worker_server

    start_worker_server()


def _resolve_source(source: str | pathlib.Path, workspace: pathlib.Path) -> str:
    """A source folder (checked, made absolute) or a PACS URI (validated; messages never show its query)."""
    from storage.pacs.uri import PacsUriError, is_pacs_uri, parse_source

    if is_pacs_uri(str(source)):
        try:
            parse_source(str(source))
        except PacsUriError as exc:
            _fail(f"invalid PACS source: {exc}")
        return str(source)
    folder = pathlib.Path(source)
    if not folder.is_dir():
        _fail(f"source folder does not exist: {folder}")
    _check_separate(folder, workspace)
    return str(folder.resolve())


@app.command()
@_collector_paused
def run(source: Annotated[str, typer.Argument(help="Folder of DICOM files (any depth, any names), or a PACS "
                                                  "URI dimse://AET@host:port?... / dicomweb+http(s)://...?...")],
        workspace: Annotated[pathlib.Path, typer.Option(help="Workspace folder.")],
        config: Annotated[pathlib.Path | None, typer.Option(help="YAML config (sections of PipelineConfig).")] = None,
        clinical: Annotated[pathlib.Path | None, typer.Option(help="Clinical case table (CSV/Parquet).")] = None,
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's task log lines.")) -> None:
    """Run the full pipeline on a folder of DICOM."""
    runtime.configure(verbose)
    from medflow.config import load_config

    source = _resolve_source(source, workspace)
    _start_worker_server()
    try:
        cfg = load_config(config, source=source, workspace=str(workspace.resolve()),
                          clinical=str(clinical.resolve()) if clinical else None)
    except (ValueError, FileNotFoundError) as exc:
        _fail(f"invalid configuration:{chr(10) if chr(10) in str(exc) else ' '}{exc}")
    t0 = time.perf_counter()
    try:
        summary = _run_pipeline(cfg, verbose=verbose)
    except Exception as exc:  # noqa: BLE001 - one-line reason for the user, full detail with -v
        if verbose:
            raise
        _fail(f"pipeline failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    _print_summary(summary, time.perf_counter() - t0)


@app.command()
def demo(workspace: Annotated[pathlib.Path, typer.Option(help="Workspace folder.")] = pathlib.Path("medflow-demo"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the full pipeline on the bundled sample (IBSI STS_008/STS_025, CC BY 3.0)."""
    if not SAMPLE.is_dir():
        _fail(f"bundled sample not found at {SAMPLE}")
    run(SAMPLE, workspace, None, None, verbose)


@app.command()
@_collector_paused
def ingest(source: Annotated[str, typer.Argument(help="Folder of DICOM files, or a PACS URI.")],
           workspace: Annotated[pathlib.Path, typer.Option(help="Workspace folder.")],
           config: Annotated[pathlib.Path | None, typer.Option(help="YAML config.")] = None,
           verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Collection only: scan, guard, de-identify and convert into the workspace."""
    runtime.configure(verbose)
    from flows.pipeline import ingest as ingest_flow
    from medflow.config import load_config

    source = _resolve_source(source, workspace)
    _start_worker_server()
    cfg = load_config(config, source=source, workspace=str(workspace.resolve()))
    t0 = time.perf_counter()
    try:
        summary = ingest_flow(cfg)
    except Exception as exc:  # noqa: BLE001
        if verbose:
            raise
        _fail(f"ingest failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    out.print(f"volumes: {summary['volumes']}  masks: {summary['masks']}  quarantined: {summary['quarantined']}  "
              f"({time.perf_counter() - t0:.1f} s)")


@app.command()
def export(workspace: Annotated[pathlib.Path, typer.Argument(help="A medflow workspace.")],
           out_dir: Annotated[pathlib.Path, typer.Option("--out", help="Output folder.")],
           fmt: Annotated[str, typer.Option("--format", help="Output format (nifti).")] = "nifti",
           catalog_url: Annotated[str | None, typer.Option(help="Catalog URL if not the workspace's SQLite.")] = None
           ) -> None:
    """Export every converted volume (one .nii.gz each, RAS affine) and index.csv."""
    from storage.export import export_nifti

    if fmt != "nifti":
        _fail(f"--format must be 'nifti', got {fmt!r}")
    try:
        rows = export_nifti(workspace, out_dir, catalog_url=catalog_url)
    except FileNotFoundError as exc:
        _fail(str(exc))
    out.print(f"{len(rows)} volumes written to {out_dir} (index.csv)")


@app.command()
def features(image: Annotated[pathlib.Path, typer.Option(
                 help="Image: NIfTI/NRRD file, a DICOM series folder, or a workspace volume folder.")],
             mask: Annotated[pathlib.Path, typer.Option(
                 help="Mask: NIfTI/NRRD or workspace mask on the image grid, or an RTSTRUCT/SEG file (DICOM image).")],
             out_csv: Annotated[pathlib.Path, typer.Option("--out", help="Output CSV.")],
             preset: Annotated[str | None, typer.Option(help="IBSI preset, e.g. ibsi-config-c.")] = None,
             settings: Annotated[pathlib.Path | None, typer.Option(help="Feature settings YAML.")] = None,
             roi: Annotated[str | None, typer.Option(
                 help="Label value (label images) or ROI/segment name (RTSTRUCT/SEG).")] = None) -> None:
    """IBSI-1 features of one ROI as a CSV (one row per feature value)."""
    from medflow.features_cli import run_features

    if (preset is None) == (settings is None):
        _fail("give exactly one of --preset or --settings")
    try:
        table = run_features(image, mask, preset=preset, settings_file=settings, roi=roi, out=out_csv)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    out.print(f"{len(table)} feature values written to {out_csv}")


@app.command("filter")
def filter_(image: Annotated[pathlib.Path, typer.Argument(help="Image: NIfTI or NRRD.")],
            filter_yaml: Annotated[pathlib.Path, typer.Option("--filter", help="Filter YAML (IBSI-2 vocabulary).")],
            out_path: Annotated[pathlib.Path, typer.Option("--out", help="Output response map (.nii.gz).")]) -> None:
    """Apply one IBSI-2 filter described in YAML and write the response map."""
    from medflow.filter_cli import run_filter

    try:
        run_filter(image, filter_yaml, out_path)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    out.print(f"response map written to {out_path}")


@app.command()
def deidentify(in_dir: Annotated[pathlib.Path, typer.Argument(help="Folder of DICOM files.")],
               out_dir: Annotated[pathlib.Path, typer.Argument(help="Output folder (must not be inside IN_DIR).")],
               config: Annotated[pathlib.Path | None, typer.Option(help="YAML with a 'collection' section.")] = None,
               workspace: Annotated[pathlib.Path | None, typer.Option(help="Workspace for the vault/quarantine.")] = None
               ) -> None:
    """Write de-identified DICOM (PS3.15 Annex E Basic Profile + configured options)."""
    from medflow.config import CollectionConfig
    from medflow.deid_cli import run_deidentify
    from storage.deid.options import DeidOptions

    try:
        section = {}
        if config is not None:
            import yaml

            section = (yaml.safe_load(config.read_text()) or {}).get("collection", {})
        coll = CollectionConfig.model_validate(section)
        options = DeidOptions(**{name: getattr(coll, name) for name in (
            "retain_longitudinal_modified_dates", "retain_patient_characteristics", "clean_descriptors",
            "retain_safe_private", "allow_burned_in", "retain_unlisted_text", "pseudonymize_patient")})
        run_deidentify(in_dir, out_dir, options=options, workspace=workspace, echo=out.print)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))



@app.command()
def serve(state_dir: Annotated[pathlib.Path, typer.Option(help="Folder for all state: Prefect DB, logs, staging.")]
          = pathlib.Path("medflow-serve"),
          port: Annotated[int, typer.Option(help="Port of the server on 127.0.0.1.")] = 4200,
          insecure_local: Annotated[bool, typer.Option(
              "--insecure-local", help="Allow running without PREFECT_SERVER_API_AUTH_STRING.")] = False,
          log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR or CRITICAL.")] = "WARNING",
          watch: Annotated[pathlib.Path | None, typer.Option(help="Drop folder to watch for arriving studies.")] = None,
          workspace: Annotated[pathlib.Path | None, typer.Option(help="Shared workspace for arriving studies.")] = None,
          quiet_seconds: Annotated[float, typer.Option(help="A study is complete after this long unchanged.")] = 10.0
          ) -> None:
    """Serve medflow: Prefect server (loopback, auth, CSRF), work pool, deployments, worker, folder watcher."""
    from medflow.serve import ServeError, ServeOptions
    from medflow.serve import serve as run_serve

    try:
        opts = ServeOptions(state_dir=state_dir, port=port, insecure_local=insecure_local, log_level=log_level,
                            watch=watch, workspace=workspace, quiet_s=quiet_seconds)
        code = run_serve(opts, log=lambda m: console.print(m, highlight=False))
    except ServeError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def watch(folder: Annotated[pathlib.Path, typer.Argument(help="Drop folder: each top-level subfolder is a study.")],
          workspace: Annotated[pathlib.Path, typer.Option(help="Shared workspace the studies are processed into.")],
          state_dir: Annotated[pathlib.Path, typer.Option(help="Folder for the watcher's state and staged studies.")]
          = pathlib.Path("medflow-serve"),
          quiet_seconds: Annotated[float, typer.Option(help="A study is complete after this long unchanged.")] = 10.0,
          interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0) -> None:
    """Watch a drop folder; emit medflow.study.arrived once per complete study (needs PREFECT_API_URL)."""
    import os
    import threading

    from medflow.serve import make_watcher

    runtime.configure(False)
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: point it at the server started by 'medflow serve'")
    if not folder.is_dir():
        _fail(f"watched folder does not exist: {folder}")
    try:
        watcher = make_watcher(folder, workspace=workspace.resolve(), state_dir=state_dir.resolve(),
                               quiet_s=quiet_seconds, log=lambda m: console.print(m, highlight=False))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    stop = threading.Event()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"watching {folder} (quiet period {quiet_seconds:g} s)", highlight=False)
    watcher.run(interval_s=interval, stop=stop,
                on_error=lambda e: console.print(f"watcher: {type(e).__name__}: {e}", highlight=False))

def _fail_whole(message: str, code: int = 1) -> None:
    """Like _fail, but the message is printed unwrapped and without markup (it names columns verbatim)."""
    from rich.markup import escape

    console.print(f"[red]medflow: {escape(message)}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


schema_app = typer.Typer(no_args_is_help=True, help="Case schemas: the role of every clinical column.")
app.add_typer(schema_app, name="schema")
casebase_app = typer.Typer(no_args_is_help=True, help="Stored case bases that new patients are placed against.")
app.add_typer(casebase_app, name="casebase")


@schema_app.command("propose")
def schema_propose(table: Annotated[pathlib.Path, typer.Argument(help="Clinical sheet (CSV/TSV/Parquet).")],
                   out_path: Annotated[pathlib.Path, typer.Option("--out", help="Schema YAML to write.")],
                   lang: Annotated[str, typer.Option(help="Language of the printed roles (en|zh).")] = "en") -> None:
    """Propose the role of every column, print it for you to confirm, write the schema YAML to edit."""
    from medflow.discover_cli import propose_schema_file

    if lang not in ("en", "zh"):
        _fail(f"--lang must be en or zh, got {lang!r}")
    try:
        _schema, lines = propose_schema_file(table, out_path, lang=lang)
    except (ValueError, FileNotFoundError) as exc:
        _fail_whole(str(exc))
    for line in lines:
        out.print(line, highlight=False, markup=False)
    out.print(f"schema written to {out_path}: check every role (declare the label) before using it", highlight=False)


@schema_app.command("check")
def schema_check(schema: Annotated[pathlib.Path, typer.Argument(help="Schema YAML.")],
                 table: Annotated[pathlib.Path | None, typer.Option(help="Clinical sheet it must match.")] = None
                 ) -> None:
    """Validate a (hand-edited) schema, and that it matches a table when one is given."""
    from storage.clinical import check_schema_matches, read_case_schema, read_raw_table

    try:
        s = read_case_schema(schema)
        if table is not None:
            check_schema_matches(s, read_raw_table(table).columns)
    except (ValueError, FileNotFoundError) as exc:
        _fail_whole(str(exc))
    for line in s.describe():
        out.print(line, highlight=False, markup=False)
    out.print("schema is valid", highlight=False)


@app.command()
def discover(table: Annotated[pathlib.Path, typer.Argument(help="Case table (Parquet/CSV): long feature rows joined "
                                                                  "with clinical columns, or one row per patient.")],
             schema: Annotated[pathlib.Path, typer.Option(help="Case-schema YAML (medflow schema propose).")],
             out_dir: Annotated[pathlib.Path, typer.Option("--out", help="Output folder.")],
             lang: Annotated[str, typer.Option(help="Report/rules language: en or zh.")] = "en",
             config: Annotated[pathlib.Path | None, typer.Option(help="YAML with a 'discovery' section.")] = None
             ) -> None:
    """Knowledge discovery on a ready case table: metrics.json, rules.txt and report.html in OUT."""
    from medflow.config import DiscoveryConfig
    from medflow.discover_cli import run_discover

    if lang not in ("en", "zh"):
        _fail(f"--lang must be en or zh, got {lang!r}")
    try:
        section = {}
        if config is not None:
            from medflow.yamlio import read_yaml_mapping

            section = read_yaml_mapping(config, what="config file").get("discovery", {}) or {}
        metrics = run_discover(table, schema_path=schema, out=out_dir, lang=lang,
                               config=DiscoveryConfig.model_validate(section))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail_whole(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    for name, m in (metrics["prediction"].get("models") or {}).items():
        out.print(f"{name}: AUC {m['auc']:.3f} {m['auc_ci']}", highlight=False)
    out.print(f"metrics.json, rules.txt and report.html written to {out_dir}", highlight=False)


@casebase_app.command("build")
@_collector_paused
def casebase_build(cohort: Annotated[pathlib.Path, typer.Argument(help="Cohort folder with dicom/ and clinical.csv.")],
                   out_dir: Annotated[pathlib.Path, typer.Option("--out", help="Output folder.")],
                   config: Annotated[pathlib.Path, typer.Option(help="Cohort config YAML.")] = pathlib.Path(
                       "docs/sts_cohort.yaml"),
                   workspace: Annotated[pathlib.Path | None, typer.Option(help="Workspace (default: temporary).")] = None,
                   exclude: Annotated[list[str] | None, typer.Option(help="Patient IDs left out (default: the demo "
                                                                          "sample's STS_008, STS_025).")] = None,
                   verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the pipeline on a cohort and write its case base (neutral ids, no PHI) + schema.yaml to OUT."""
    import tempfile

    from medflow.discover_cli import DEMO_PATIENTS, build_casebase

    runtime.configure(verbose)
    if not (cohort / "dicom").is_dir() or not (cohort / "clinical.csv").is_file():
        _fail(f"cohort folder must hold dicom/ and clinical.csv: {cohort}")
    with tempfile.TemporaryDirectory(prefix="medflow-casebase-") as tmp:
        try:
            info = build_casebase(cohort, out=out_dir, workspace=workspace or pathlib.Path(tmp) / "ws", config=config,
                                  exclude=tuple(exclude) if exclude else DEMO_PATIENTS)
        except (ValueError, FileNotFoundError) as exc:
            if verbose:
                raise
            _fail(str(exc).splitlines()[0])
    out.print(f"{info['rows']} cases x {info['columns']} columns written to {info['path']} "
              f"(excluded: {', '.join(info['excluded'])})", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("medflow: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
