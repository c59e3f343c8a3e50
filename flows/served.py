"""Flows of the served deployments: the pipeline with crash bookkeeping, a new study's run, cohort re-mining.

* :data:`pipeline` / :data:`ingest` -- the flows of ``flows/pipeline.py`` with hooks that keep a
  registry of live runs in the workspace (``storage.lease.RunRegistry``). A run that starts finds
  the runs whose process died without a final state (``kill -9``, power loss) and marks them
  Crashed in Prefect, so no run stays "Running" forever even without a server-side automation.
* :func:`on_new_study` -- started by the ``medflow.study.arrived`` event (``prefect.yaml``):
  processes one staged study into the shared workspace, then re-mines the cohort.
* :func:`cohort_discovery` -- the ``discovery-weekly`` deployment: discovery and a cohort report
  over every case of a workspace (``reports/cohort.html``).

Only pseudonymous keys and workspace paths cross into Prefect: the staged study folder is named
by the study's content digest (``storage.watch``), never by the sender's folder name.
"""

import os
import pathlib
import re
import uuid
from typing import Any

from prefect import flow, get_run_logger

from flows import pipeline as pipeline_module
from medflow.config import PipelineConfig
from storage.lease import RunRegistry
from storage.workspace import Workspace, write_text_atomic
from tasks.cohort import case_base, cohort_summary
from tasks.discovery import discover
from tasks.report import report as report_task
from tasks.report import volume_figures

_LIVE: dict[str, RunRegistry] = {}
_STUDY_KEY = re.compile(r"^[0-9a-f]{16}$")


def _workspace_of(flow_run: Any) -> str | None:
    config = (getattr(flow_run, "parameters", None) or {}).get("config")
    if isinstance(config, PipelineConfig):
        return config.workspace
    if isinstance(config, dict):
        return config.get("workspace")
    return None


def mark_crashed(run_ids: list[str], *, reason: str) -> list[str]:
    """Set each still Pending/Running flow run in ``run_ids`` to Crashed; returns those changed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    changed = []
    with get_client(sync_client=True) as client:
        for rid in run_ids:
            try:
                run = client.read_flow_run(uuid.UUID(rid))
            except Exception:  # noqa: BLE001 - unknown to this API (another server): nothing to mark
                continue
            if run.state is not None and run.state.type.value in ("PENDING", "RUNNING"):
                client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
                changed.append(rid)
    return changed


def _on_running(flow: Any, flow_run: Any, state: Any) -> None:
    workspace = _workspace_of(flow_run)
    if not workspace:
        return
    registry = RunRegistry(workspace)
    stale = registry.stale()
    if stale:
        crashed = mark_crashed(stale, reason="the run's process ended without a final state (medflow run registry)")
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run).warning("marked %d earlier run(s) Crashed: %s", len(crashed), ", ".join(crashed))
        for rid in stale:
            registry.forget(rid)
    registry.enter(str(flow_run.id))
    _LIVE[str(flow_run.id)] = registry


def _on_final(flow: Any, flow_run: Any, state: Any) -> None:
    registry = _LIVE.pop(str(flow_run.id), None)
    if registry is not None:
        registry.leave(str(flow_run.id))


_HOOKS = {"on_running": [_on_running], "on_completion": [_on_final], "on_failure": [_on_final],
          "on_cancellation": [_on_final], "on_crashed": [_on_final]}

#: The pipeline flow (same name, same parameters) with the run-registry hooks.
pipeline = pipeline_module.pipeline.with_options(**_HOOKS)
#: The collection-only flow with the run-registry hooks (the ``ingest`` and ``ingest-nightly`` deployments).
ingest = pipeline_module.ingest.with_options(**_HOOKS)


@flow(name="medflow-cohort-discovery",
      description="Re-mine the whole case base of a workspace: cohort discovery and the cohort report.")
def cohort_discovery(config: PipelineConfig) -> dict[str, Any]:
    """Discovery over every case in ``config.workspace`` and ``reports/cohort.html``.

    Only ``workspace``, ``catalog_url`` and the ``discovery`` section of ``config`` are used; the
    case base is what the catalog lists (the newest feature table of each volume).
    """
    logger = get_run_logger()
    ws = Workspace(config.workspace).ensure()
    workspace = str(ws.root)
    base = case_base(workspace, config.catalog_url)
    if not base["features"]:
        logger.warning("the workspace has no analysed cases yet: nothing to mine")
        return {"workspace": workspace, "cases": 0, "volumes": 0, "report": None}
    store = {"result_storage": ws.results}
    disc = discover.with_options(**store)(workspace, base["features"], None, config.discovery)
    summary = cohort_summary.with_options(**store)(workspace, base["qc"], base["rejections"])
    volumes = [v for v in base["volumes"] if v.meta.get("kind", "3d") == "3d"
               and any(f.meta.get("volume_key") == v.meta["volume_key"] for f in base["features"])]
    rep = report_task.with_options(**store)(workspace, summary, volumes, volume_figures(workspace, volumes, base["masks"]),
                                            [], base["features"], disc.results)
    latest = ws.reports / "cohort.html"
    write_text_atomic(latest, ws.resolve(rep.html).read_text())
    logger.info("cohort: %d cases, %d volumes with features", disc.n_cases, len(base["features"]))
    return {"workspace": workspace, "cases": disc.n_cases, "volumes": len(base["features"]),
            "discovery": disc.results.uri, "report": ws.relative(latest), "features": rep.features.uri}


@flow(name="medflow-on-new-study",
      description="A study arrived (medflow.study.arrived): process it into the workspace, then re-mine the cohort.")
def on_new_study(config: PipelineConfig, study: str) -> dict[str, Any]:
    """Run the pipeline on one staged study (``config.source``) and update the cohort discovery and report.

    Parameters
    ----------
    config : PipelineConfig
        ``source`` is the staged study folder (``.../staging/<study>``), ``workspace`` the shared workspace.
    study : str
        The study key: 16 hex digits of the study's content digest (the staged folder's name).
    """
    if not _STUDY_KEY.match(study):
        raise ValueError(f"study must be the 16-hex-digit key of a staged study, got {study!r}")
    if pathlib.Path(config.source).name != study:
        raise ValueError(f"config.source must be the staged folder of study {study} (…/{study}), "
                         f"got a folder named {pathlib.Path(config.source).name!r}")
    if not os.path.isdir(config.source):
        raise FileNotFoundError(f"staged study folder is missing for study {study}")
    summary = pipeline(config)
    cohort = cohort_discovery(config)
    return {"study": study, "volumes": summary["volumes"], "masks": summary["masks"],
            "quarantined": summary["quarantined"], "report": summary["report"], "cohort": cohort}
