"""The medflow pipeline flow: collection -> preprocessing -> processing -> analysis -> discovery -> report.

Run it locally with ``medflow run SOURCE --workspace DIR`` (Prefect's ephemeral API,
no server needed), from the Prefect UI through the deployment in ``prefect.yaml``,
or from Python: ``pipeline(PipelineConfig(source=..., workspace=...))``.

Tasks pass small references (workspace-relative URI + content digest), never arrays or
DICOM headers; each caches on the content of its inputs, its parameters and its
stage's code version, with its cache record in ``WORKSPACE/results``.

Each 3-D volume is one Prefect task (:func:`tasks.chain.volume_chain`: preprocess ->
segment -> features, each a content-keyed step with its own artifact folder and cache
check). Independent volumes run concurrently: on a ``ThreadPoolTaskRunner`` sized so that
chains x dask threads <= cores, or -- with ``compute.dask_scheduler_address`` -- on that
``dask.distributed`` cluster through ``prefect_dask.DaskTaskRunner``.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger

from medflow.config import PipelineConfig
from storage.lease import study_lease
from storage.memory import configure_allocator, freeze_startup_heap, release_memory
from storage.workers import start_worker_server
from storage.workspace import Workspace, write_text_atomic
from tasks.chain import cached_chain, local_plan, volume_chain
from tasks.clinical import file_fingerprint, ingest_clinical
from tasks.collection import collect, source_fingerprint
from tasks.discovery import casebase_fingerprint, discover
from tasks.preprocessing import fuse
from tasks.report import report as report_task

#: Optional callable(task_name, state_name) told about every task as it finishes (the CLI's progress line).
PROGRESS_HOOK: Any = None


def _lease_holder() -> dict[str, str]:
    from prefect.runtime import flow_run

    return {"flow_run_id": str(flow_run.id)}


class _Runner:
    """Calls tasks with the workspace's result storage and keeps a ran/cached tally."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.tally: list[dict[str, Any]] = []
        self.prefect_tasks = 0  # volume-chain task runs (their steps are in the tally)
        self.chains: list[tuple[float, float]] = []  # (started, finished) of each volume chain
        self._tasks: dict[str, Any] = {}

    def __call__(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        configured = self._tasks.get(task.name)
        if configured is None:
            configured = self._tasks[task.name] = task.with_options(result_storage=self.ws.results)
        t0 = time.perf_counter()
        state = configured(*args, return_state=True, **kwargs)
        self.tally.append({"task": task.name, "state": state.name, "seconds": round(time.perf_counter() - t0, 3)})
        if PROGRESS_HOOK is not None:
            PROGRESS_HOOK(task.name, state.name)
        return state.result()

    def add_steps(self, steps: list[dict[str, Any]], *, span: tuple[float, float] | None = None,
                  task_run: bool = True) -> None:
        """Record the content-keyed steps of one volume chain and when it ran (epoch s).

        ``task_run=False``: every step was a cache hit found by the flow itself (no task run was made).
        """
        self.prefect_tasks += int(task_run)
        if span is not None and task_run:
            self.chains.append(span)
        for s in steps:
            self.tally.append({**s, "inside": "volume-chain" if task_run else "flow (cached chain)"})
            if PROGRESS_HOOK is not None:
                PROGRESS_HOOK(s["task"], s["state"])

    def summary(self) -> dict[str, Any]:
        """``tasks`` counts cache units (Prefect tasks and the steps inside volume chains); ``prefect_tasks``
        the Prefect task runs."""
        cached = sum(1 for t in self.tally if t["state"] == "Cached")
        outer = sum(1 for t in self.tally if "inside" not in t)
        return {"tasks": len(self.tally), "cached": cached, "ran": len(self.tally) - cached,
                "prefect_tasks": outer + self.prefect_tasks, "chains": self.chains, "detail": self.tally}


def _volume_runner(config: PipelineConfig, n_volumes: int) -> tuple[Any, Any]:
    """The task runner for the volume chains and the compute settings each chain gets.

    With ``compute.dask_scheduler_address``: ``prefect_dask.DaskTaskRunner`` on that scheduler; a chain
    occupies one worker thread and runs its own dask work on ``dask_threads`` (default 1) local threads
    of that worker (a nested client inside a worker task could deadlock the worker's thread pool).
    Otherwise a ``ThreadPoolTaskRunner`` of :func:`tasks.chain.local_plan` chains, each with its share
    of the cores as dask threads. ``compute`` never enters a cache key: results are the same either way.
    """
    compute = config.compute
    if compute.dask_scheduler_address:
        from prefect_dask import DaskTaskRunner

        return (DaskTaskRunner(address=compute.dask_scheduler_address),
                compute.model_copy(update={"dask_scheduler_address": None, "dask_threads": compute.dask_threads or 1}))
    from prefect.task_runners import ThreadPoolTaskRunner

    chains, threads = local_plan(compute, n_volumes)
    return ThreadPoolTaskRunner(max_workers=chains), compute.model_copy(update={"dask_threads": threads})


@contextlib.contextmanager
def _api_for_workers(remote: bool) -> Iterator[None]:
    """Let task runs on remote dask workers report to this flow's Prefect API.

    On the ephemeral API (no ``PREFECT_API_URL``) a worker process would start an API server of its
    own; the URL of the one this flow uses is put into the settings that ``DaskTaskRunner`` ships
    with each task.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not remote or PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client

    with temporary_settings({PREFECT_API_URL: str(get_client().api_url)}):
        yield


def _local_source(run: _Runner, ws: Workspace, config: PipelineConfig, key_id: str) -> str:
    """The folder collection reads: ``config.source`` itself or, for a PACS URI, the complete studies it
    pulled into ``WORKSPACE/incoming/<pull key>`` (private; see :mod:`storage.pacs.pull`)."""
    from storage.pacs.uri import is_pacs_uri

    if not is_pacs_uri(config.source):
        return config.source
    from tasks.pacs import pull as pull_task

    pulled = run(pull_task, str(ws.root), config.source, config.pacs, key_id, config.catalog_url)
    return str(ws.root / pulled.staging)


def _register(ws: Workspace, config: PipelineConfig, coll: Any, outputs: dict[str, Any]) -> None:
    """Idempotent catalog upserts of everything this run produced (cheap; runs on cached reruns too)."""
    import json

    from storage.catalog import Catalog

    summary = json.loads(ws.resolve(coll.summary).read_text())
    with Catalog.for_workspace(ws.root, config.catalog_url) as cat:  # closed: no pooled connection outlives the run
        # one transaction (the row-by-row calls cost one transaction and one SQLite fsync per row)
        cat.register_collection(coll.volumes, coll.masks, qc=summary.get("qc", []),
                                rejections=summary.get("rejections", []), artifacts=outputs)


def _publish(summary: dict[str, Any], features_uri: str, report_uri: str) -> None:
    """Prefect UI artifacts (pseudonymous content only)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    md = (f"## medflow run\n\n* volumes: {summary['volumes']}\n* masks: {summary['masks']}\n"
          f"* quarantined inputs: {summary['quarantined']}\n* tasks: {summary['tasks']['tasks']} "
          f"({summary['tasks']['ran']} ran, {summary['tasks']['cached']} from cache)\n"
          f"* report: `{report_uri}` (in the workspace)\n* features: `{features_uri}`\n")
    create_markdown_artifact(markdown=md, key="medflow-run-summary", description="medflow pipeline summary")
    create_table_artifact(table=summary["rois"], key="medflow-rois", description="ROIs and feature counts")


@flow(name="medflow-pipeline", description="DICOM folder to volumes, masks, features, predictions and a report.")
def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run all five stages on ``config.source`` into ``config.workspace``; returns a PHI-free summary."""
    from storage.pseudonym import PseudonymKeys

    freeze_startup_heap()
    configure_allocator()
    logger = get_run_logger()
    ws = Workspace(config.workspace).ensure()
    keys = PseudonymKeys.from_env()
    run = _Runner(ws)
    source = _local_source(run, ws, config, keys.key_id())
    workspace = str(ws.root)

    start_worker_server()  # the collection workers' server imports while the source is fingerprinted
    content = source_fingerprint(source, workspace=ws.root, keys=keys)
    with study_lease(ws.root, content.digest, holder=_lease_holder()):  # one ingest of a study at a time
        coll = run(collect, workspace, source, content, config.collection, keys.key_id())
    logger.info("collection: %d volumes, %d masks, %d inputs quarantined", len(coll.volumes), len(coll.masks),
                coll.n_rejected)
    discovery_cfg = config.discovery.resolved()  # schema file content inline: its content, not its path, is keyed
    clinical = None
    if config.clinical:
        clinical = run(ingest_clinical, workspace, config.clinical, file_fingerprint(config.clinical), keys.key_id(),
                       discovery_cfg.roles)

    masks_by_volume: dict[str, list] = {}
    for m in coll.masks:
        masks_by_volume.setdefault(m.meta["volume_key"], []).append(m)
    volumes = []
    for vol in coll.volumes:
        if vol.meta.get("kind") != "3d":
            logger.info("volume %s is %s: collected and exported, not analysed as 3-D", vol.meta["volume_key"],
                        vol.meta.get("kind"))
            continue
        volumes.append(vol)
    pre_out, proc_out, feat_out, figures = [], [], [], []
    runner, compute = _volume_runner(config, len(volumes))
    params = [{"workspace": workspace, "volume": vol, "masks": masks_by_volume.get(vol.meta["volume_key"], []),
               "preprocessing": config.preprocessing, "processing": config.processing, "analysis": config.analysis,
               "compute": compute} for vol in volumes]
    # a volume whose every step is a cache hit costs a few record reads here, not a task run
    outputs: list[Any] = [cached_chain(**p) for p in params]
    todo = [i for i, out in enumerate(outputs) if out is None]
    if todo:
        with _api_for_workers(bool(config.compute.dask_scheduler_address)), runner:
            futures = {i: runner.submit(volume_chain, parameters=params[i]) for i in todo}
            for i in todo:  # collected in submission order: the same outputs whatever finished first
                outputs[i] = futures[i].result()
    for i, out in enumerate(outputs):
        run.add_steps(out.steps, span=(out.started, out.finished), task_run=i in todo)
        pre_out.append(out.pre)
        proc_out.append(out.proc)
        feat_out.append(out.feats)
        if out.figure.png is not None:
            figures.append(out.figure.png)

    fusions = []
    if config.fusion.enabled:
        for study in sorted({p.volume.meta["study_key"] for p in pre_out}):
            in_study = [p.volume for p in pre_out if p.volume.meta["study_key"] == study]
            fixed = next((v for v in in_study if v.meta.get("modality") == config.fusion.reference_modality), None)
            if fixed is None:
                logger.info("study %s has no %s volume: nothing to fuse onto", study, config.fusion.reference_modality)
                continue
            for moving in in_study:
                if moving is not fixed:
                    fusions.append(run(fuse, workspace, fixed, moving, config.fusion, config.compute))

    stored = discovery_cfg.casebase_path()
    disc = run(discover, workspace, [f.features for f in feat_out], clinical, discovery_cfg,
               casebase_fingerprint(stored) if stored else None, str(stored) if stored else None)
    rep = run(report_task, workspace, coll.summary, [p.volume for p in pre_out], figures,
              [p.evaluation for p in proc_out if p], [f.features for f in feat_out], disc.results,
              [f.transform for f in fusions], [p.detections for p in proc_out if p and p.detections])

    if config.pacs.write_back and source != config.source:
        from tasks.pacs import write_back

        run(write_back, workspace, config.source, ws.relative(source), coll.volumes, coll.masks,
            [f.features for f in feat_out], config.pacs, keys.key_id())
    latest = ws.reports / "report.html"
    collected = {v.uri for v in coll.volumes}  # a preprocessing step that applied nothing hands these on
    write_text_atomic(latest, ws.resolve(rep.html).read_text())
    _register(ws, config, coll, {"preprocessing": [p.volume for p in pre_out if p.volume.uri not in collected], "analysis": [f.features for f in feat_out],
                                 "discovery": [disc.results, *disc.models], "report": [rep.html, rep.features]})
    summary = {
        "workspace": str(ws.root),
        "report": ws.relative(latest),
        "report_artifact": rep.html.uri,
        "features": rep.features.uri,
        "discovery": disc.results.uri,
        "volumes": len(coll.volumes),
        "masks": len(coll.masks),
        "quarantined": coll.n_rejected,
        "routed": coll.n_routed,
        "rois": [{"volume_key": f.features.meta.get("volume_key"), "modality": f.features.meta.get("modality"),
                  "rois": f.n_rois, "feature_values": f.n_values} for f in feat_out],
        "tasks": run.summary(),
    }
    _publish(summary, rep.features.uri, summary["report"])
    logger.info("tasks: %d ran, %d from cache", summary["tasks"]["ran"], summary["tasks"]["cached"])
    release_memory()
    return summary


@flow(name="medflow-ingest", description="Collection only: DICOM folder to pseudonymised volumes and masks.")
def ingest(config: PipelineConfig) -> dict[str, Any]:
    """Scan, guard, de-identify and convert ``config.source``; register it in the catalog."""
    freeze_startup_heap()
    configure_allocator()
    from storage.pseudonym import PseudonymKeys

    ws = Workspace(config.workspace).ensure()
    keys = PseudonymKeys.from_env()
    run = _Runner(ws)
    source = _local_source(run, ws, config, keys.key_id())
    start_worker_server()  # the collection workers' server imports while the source is fingerprinted
    content = source_fingerprint(source, workspace=ws.root, keys=keys)
    with study_lease(ws.root, content.digest, holder=_lease_holder()):  # one ingest of a study at a time
        coll = run(collect, str(ws.root), source, content, config.collection, keys.key_id())
    _register(ws, config, coll, {})
    release_memory()
    return {"workspace": str(ws.root), "volumes": len(coll.volumes), "masks": len(coll.masks),
            "quarantined": coll.n_rejected, "routed": coll.n_routed, "tasks": run.summary()}
