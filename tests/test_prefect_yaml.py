"""prefect.yaml entrypoints import, and the config model round-trips from YAML."""

import importlib
import pathlib

import yaml

from medflow.config import PipelineConfig, dump_config, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_entrypoint_imports_and_takes_the_config_model():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "no deployments"
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "fn"), f"{dep['entrypoint']} is not a Prefect flow"
        params = flow.parameters.model_dump()
        assert "config" in params["properties"], dep["entrypoint"]
        PipelineConfig.model_validate(dep["parameters"]["config"])


def test_config_round_trips_through_yaml(tmp_path):
    cfg = PipelineConfig(source="/in", workspace="/ws")
    cfg = cfg.model_copy(update={"preprocessing": cfg.preprocessing.model_copy(update={"denoise": "median"})})
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg


def test_config_errors_name_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("source: /in\nworkspace: /ws\npreprocessing:\n  median_size: 4\n")
    try:
        load_config(p)
    except ValueError as exc:
        assert "median_size" in str(exc)
    else:
        raise AssertionError("invalid median_size accepted")
