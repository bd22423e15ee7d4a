"""Serve API pieces without a server: request decoding, schemas, config, token, format negotiation, deploy file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from dcgen.data.grid import GRIDS
from dcgen.serve import api
from dcgen.serve.api import EncodedArray, ScenesRequest
from dcgen.serve.app import _token_ok, app_builder, response_format
from dcgen.serve.client import scene_body
from dcgen.serve.config import ServeConfig, read_token, token_digest
from dcgen.serve.errors import _field_of

ROOT = Path(__file__).resolve().parents[2]
GRID = GRIDS["debug"]
ACCEPTED = ("command", "trajectory", "layout", "bev", "prev_clip", "inpaint", "outpaint")


def _schema(name: str) -> dict:
    return json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())


def test_schema_files_are_generated_from_the_models():
    hint = "regenerate: python -c \"from dcgen.serve.api import write_schemas; write_schemas('schemas')\""
    assert _schema("serve-request") == api.request_schema(), hint
    assert _schema("serve-response") == api.response_schema(), hint
    jsonschema.Draft202012Validator.check_schema(_schema("serve-request"))
    jsonschema.Draft202012Validator.check_schema(_schema("serve-response"))


def test_client_bodies_satisfy_the_request_schema_and_model():
    t, (x, y, z) = GRID.num_frames, GRID.size
    rng = np.random.default_rng(0)
    body = scene_body(2, 5, command=1, trajectory=rng.normal(size=(t, 3)), layout=np.zeros((t, x // 4, y // 4), int),
                      bev=rng.integers(0, 11, (x, y)), source=rng.integers(0, 11, (t, x, y, z)),
                      inpaint_mask=np.eye(x, y, dtype=bool), steps=4, guidance=2.0, trajectory_degree=2)
    jsonschema.validate(body, _schema("serve-request"))
    assert ScenesRequest.model_validate(body).trajectory_degree == 2
    scene = ScenesRequest.model_validate(body).to_scene_request().validate(GRID, ACCEPTED)
    assert scene.edit == "inpaint" and scene.used() == ("command", "trajectory", "layout", "bev")
    np.testing.assert_array_equal(scene.source, body_source := np.asarray(scene.source))
    assert body_source.dtype == np.uint8


def test_a_request_without_guidance_takes_its_conditions_default():
    t, (x, y, _) = GRID.num_frames, GRID.size
    layout = np.zeros((t, x // 4, y // 4), int)
    cases = [({}, 1.0), ({"command": 2}, 4.0), ({"layout": layout}, 1.0), ({"layout": layout, "command": 2}, 1.0),
             ({"layout": layout, "guidance": 3.0}, 3.0)]
    for fields, want in cases:
        body = scene_body(1, 5, **fields)
        assert "guidance" in body if "guidance" in fields else "guidance" not in body  # None is left out
        jsonschema.validate(body, _schema("serve-request"))
        scene = ScenesRequest.model_validate(body).to_scene_request().validate(GRID, ACCEPTED)
        assert scene.guidance == want, fields
    from dcgen.generate.conditions import CONDITION_GUIDANCE, SPEC_GUIDANCE, default_guidance

    assert default_guidance(()) == 1.0 and default_guidance(("trajectory", "bev", "prev_clip")) == SPEC_GUIDANCE
    assert default_guidance(("trajectory", "layout")) == CONDITION_GUIDANCE["layout"]


def test_nested_lists_and_encoded_arrays_decode_to_the_same_values():
    traj = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    a = ScenesRequest.model_validate({"trajectory": traj.tolist()}).to_scene_request()
    b = ScenesRequest.model_validate({"trajectory": EncodedArray.of(traj).model_dump()}).to_scene_request()
    np.testing.assert_array_equal(a.validate(GRID, ACCEPTED).trajectory, b.validate(GRID, ACCEPTED).trajectory)
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    np.testing.assert_array_equal(EncodedArray.of(big_endian).to_numpy("x"), big_endian)


@pytest.mark.parametrize("body, field", [
    ({"count": 0}, "count"),
    ({"count": "2"}, "count"),
    ({"command": True}, "command"),
    ({"command": 4}, "command"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"sampler": "euler"}, "sampler"),
    ({"steps": 0}, "steps"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": -1.0}, "guidance"),
    ({"trajectory_degree": -1}, "trajectory_degree"),
    ({"trajectory_degree": 1.5}, "trajectory_degree"),
    ({"trajectory_degree": "3"}, "trajectory_degree"),
    ({"comand": 1}, "comand"),
    ({"trajectory": [[0.0, "a", 1.0]]}, "trajectory"),
    ({"bev": {"dtype": "complex64", "shape": [1], "data": ""}}, "bev"),
])
def test_model_and_schema_reject_bad_fields(body, field):
    with pytest.raises(ValidationError) as e:
        ScenesRequest.model_validate(body)
    assert _field_of(("body", *e.value.errors()[0]["loc"])).split(".")[0] == field
    if body.get("guidance") != body.get("guidance"):  # NaN is not JSON; the schema cannot see it
        return
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, _schema("serve-request"))


@pytest.mark.parametrize("value, message", [
    ({"dtype": "uint8", "shape": [2, 2], "data": "not base64!"}, "bev.data: not valid base64"),
    ({"dtype": "uint8", "shape": [2, 2], "data": base64.b64encode(b"abc").decode()}, "3 bytes, expected 4"),
    ([[1, 2], [3]], "bev: ragged nested arrays"),
    # 65536**4 = 2**64 wraps to 0 in int64 and matched empty data; Python integers do not wrap
    ({"dtype": "uint8", "shape": [65536] * 4, "data": ""}, "bev.data: 0 bytes, expected 18446744073709551616 "),
    ({"dtype": "int64", "shape": [65536] * 4, "data": ""}, "expected 147573952589676412928 for shape"),
    ([[2**70, 1]], r"bev: integers outside the 64-bit range"),
    ([[2**63, -1]], r"bev: integers outside the 64-bit range"),  # numpy makes float64 of these
])
def test_array_decoding_errors_name_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        ScenesRequest.model_validate({"bev": value}).to_scene_request("body")


def test_one_sampler_table_and_one_default_sampler_everywhere():
    import inspect

    import typer

    from dcgen.cli import app
    from dcgen.generate import conditions, job, pipeline
    from dcgen.generate.sample_store import sample_to_store

    assert pipeline.SAMPLERS is job.SAMPLERS is api.SAMPLERS is conditions.SAMPLERS
    default = conditions.DEFAULT_SAMPLER
    assert pipeline.SamplerDefaults().sampler == ScenesRequest().sampler == job.SynthJob.sampler == default
    for function in (sample_to_store, job.build_job, pipeline.GenerationPipeline.generate):
        assert inspect.signature(function).parameters["sampler"].default == default, function
    assert "sampler" not in scene_body()  # a client leaves it to the server's default
    # the CLI writes its defaults as literals (it imports no numpy at start-up): they must be the same
    commands = typer.main.get_command(app).commands
    for command in (commands["sample"], commands["synth"]):
        assert next(p.default for p in command.params if p.name == "sampler") == default, command.name


def test_a_condition_the_model_was_not_trained_with_is_a_422_naming_that_field():
    from dcgen.serve.errors import api_error

    body = ScenesRequest.model_validate({"command": 1, "bev": np.zeros(GRID.size[:2], int).tolist()})
    with pytest.raises(ValueError) as e:
        body.to_scene_request("body").validate(GRID, ("command", "layout"), what="body")
    error = api_error(str(e.value))
    assert error.status_code == 422 and error.field == "bev"
    assert str(error.detail) == "bev: condition 'bev' is not one the model was trained with (it accepts ['command', " \
                                "'layout'])"


@pytest.mark.parametrize("shape, message", [
    ([65536] * 4, r"bev.shape\[0\]: 65536; expected a size 0..32, the largest extent of the server's grid"),
    ([32, 33], r"bev.shape\[1\]: 33; expected a size 0..32"),
])
def test_encoded_shapes_are_bounded_by_the_grid_before_sizes_are_computed(shape, message):
    body = ScenesRequest.model_validate({"bev": {"dtype": "uint8", "shape": shape, "data": ""}})
    with pytest.raises(ValueError, match=message):
        body.to_scene_request("body", max_extent=32)


@pytest.mark.parametrize("shape", [[2**63], [2**70], [-1], [1, 2, 3, 4, 5]])
def test_encoded_shapes_outside_the_wire_bounds_fail_validation(shape):
    with pytest.raises(ValidationError) as e:
        ScenesRequest.model_validate({"bev": {"dtype": "uint8", "shape": shape, "data": ""}})
    assert _field_of(("body", *e.value.errors()[0]["loc"])) == "bev"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"bev": {"dtype": "uint8", "shape": shape, "data": ""}}, _schema("serve-request"))


def test_response_examples_satisfy_the_response_schema():
    schema = _schema("serve-response")
    for degree in (3, None):  # None: an ego-frame VAE, no ego-motion prior
        meta = api.ScenesMetadata(shape=[1, 4, 32, 32, 4], seed=3, scene_seeds=[5], sampler="ddim", steps=4,
                                  guidance=4.0, trajectory_degree=degree, conditions=["command"], edit=None,
                                  class_counts=[[1] * 11], batch_sizes=[1], checkpoints={"vae": "v", "dit": "d"},
                                  seconds=0.1)
        jsonschema.validate(meta.model_dump(), schema)
    jsonschema.validate({"status": "ok", "api_version": "v1"}, schema)
    jsonschema.validate({"error": {"status": 422, "message": "count: bad", "field": "count"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": {"status": 422}}, schema)


def test_npz_round_trip_without_pickle():
    occ = np.random.default_rng(1).integers(0, 11, (2, 4, 8, 8, 2)).astype(np.uint8)
    out = api.decode_npz(api.encode_npz(occ, [1, 2**63 - 1]))
    np.testing.assert_array_equal(out["occupancy"], occ)
    assert out["scene_seeds"].tolist() == [1, 2**63 - 1]


def test_response_format_negotiation():
    assert response_format(None, "") == "npz"
    assert response_format(None, "application/json") == "json"
    assert response_format(None, "application/json, application/x-npz") == "npz"
    assert response_format("json", "application/x-npz") == "json"


@pytest.mark.parametrize("changes, message", [
    ({"host": "my-laptop"}, "host 'my-laptop' is not an IP address"),
    ({"port": 0}, "port: 0; expected an integer 1..65535"),
    ({"replicas": 0}, "replicas: 0"),
    ({"replicas": 3, "max_replicas": 2}, "max_replicas: 2; expected an integer >= 3"),
    ({"max_batch_size": 0}, "max_batch_size: 0"),
    ({"batch_wait_s": -0.1}, "batch_wait_s: -0.1"),
    ({"gpus_per_replica": float("nan")}, "gpus_per_replica: nan"),
    ({"max_count": 0}, "max_count: 0"),
    ({"token_env": "MY-TOKEN"}, "token_env 'MY-TOKEN'"),
    ({"vae": ""}, "vae: ''; expected a checkpoint directory path"),
])
def test_serve_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        ServeConfig(**{"vae": "v", "dit": "d", **changes})


def test_serve_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['batch'\]"):
        ServeConfig.from_dict({"vae": "v", "dit": "d", "batch": 3})
    assert ServeConfig.from_dict(ServeConfig("v", "d").to_dict()) == ServeConfig("v", "d")


def test_token_from_environment(monkeypatch):
    monkeypatch.delenv("DCGEN_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="DCGEN_TEST_TOKEN is not set or empty"):
        read_token("DCGEN_TEST_TOKEN")
    monkeypatch.setenv("DCGEN_TEST_TOKEN", "short")
    with pytest.raises(ValueError, match="the token is 5 characters"):
        read_token("DCGEN_TEST_TOKEN")
    monkeypatch.setenv("DCGEN_TEST_TOKEN", "s3cret-s3cret-s3cret")
    settings = ServeConfig("v", "d", token_env="DCGEN_TEST_TOKEN").ingress_settings()
    assert settings.token_sha256 == token_digest("s3cret-s3cret-s3cret")
    assert _token_ok("Bearer s3cret-s3cret-s3cret", settings.token_sha256)
    assert not _token_ok("Bearer s3cret-s3cret-s3creT", settings.token_sha256)
    assert not _token_ok("Basic s3cret-s3cret-s3cret", settings.token_sha256)
    assert not _token_ok("", settings.token_sha256)


def test_deploy_file_is_a_valid_serve_config_that_builds(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "jobs" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "dcgen.serve.app:app_builder"
    assert schema.http_options.host == "127.0.0.1"
    monkeypatch.setenv(app.args["token_env"], "x" * 32)
    built = app_builder(app.args)
    assert built._bound_deployment.name == "SceneIngress"

