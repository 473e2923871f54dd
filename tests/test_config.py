"""The project config: JSON round trip, refusing what it cannot read, validation, derived model configs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from vidanom.config import (
    CONFIG_NAME,
    RULES,
    SCHEMA_VERSION,
    ProjectConfig,
    flat,
    from_dict,
    parse_overrides,
    read_config,
    to_dict,
    with_overrides,
)
from vidanom.detector import Detector
from vidanom.errors import ConfigError, ProjectError
from vidanom.project import Project
from vidanom.scoring import COMPONENTS
from vidanom.vae import BetaVAE


def test_round_trip_through_json_restores_every_field():
    cfg = with_overrides(
        tiny_config(),
        frames={"channels": 3, "stride": 2, "motion_lag": 0},
        score={"weights": (0.5, 0.25, 2.0, 1.0), "false_alarms": 0.05, "shrink_seconds": 60.0},
        train={"lr": 3e-4, "holdout": 0.3, "vae_steps": 50},
    )
    back = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert isinstance(back.vae.hidden, tuple)
    assert back.score.weights.ordered(COMPONENTS) == (0.5, 0.25, 2.0, 1.0, 0.0, 0.0)


def test_default_config_round_trips():
    assert from_dict(json.loads(json.dumps(to_dict(ProjectConfig())))) == ProjectConfig()


def test_missing_sections_and_keys_take_defaults():
    cfg = from_dict({"schema_version": SCHEMA_VERSION, "frames": {"width": 32, "height": 32}})
    assert cfg.frames.width == 32 and cfg.frames.channels == ProjectConfig().frames.channels
    assert cfg.vae == ProjectConfig().vae


def test_with_overrides_changes_only_the_named_fields():
    base = ProjectConfig()
    cfg = with_overrides(base, train={"seed": 7})
    assert cfg.train.seed == 7 and base.train.seed == 0
    assert cfg.train.lr == base.train.lr and cfg.frames == base.frames


@pytest.mark.parametrize("where", ["top", "frames", "score"])
def test_unknown_keys_are_refused_by_name(where):
    data = to_dict(ProjectConfig())
    (data if where == "top" else data[where])["colour_depth"] = 8
    with pytest.raises(ConfigError, match="colour_depth"):
        from_dict(data)


def test_newer_schema_version_is_refused():
    data = to_dict(ProjectConfig())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ConfigError, match="newer vidanom"):
        from_dict(data)


@pytest.mark.parametrize("data", [[], {"frames": {}}, {"schema_version": "1"}, {"schema_version": 1, "vae": 4}])
def test_malformed_configs_are_config_errors(data):
    with pytest.raises(ConfigError):
        from_dict(data)


@pytest.mark.parametrize(
    "section,key,value", [("frames", "width", "wide"), ("vae", "hidden", 5), ("score", "weights", 1.0)]
)
def test_values_of_the_wrong_type_are_config_errors(section, key, value):
    data = to_dict(ProjectConfig())
    data[section][key] = value
    with pytest.raises(ConfigError):
        from_dict(data)


@pytest.mark.parametrize(
    "section,values",
    [
        ("frames", {"channels": 2}),
        ("frames", {"width": 30}),
        ("frames", {"stride": 0}),
        ("frames", {"motion_lag": -1}),
        ("train", {"holdout": 1.0}),
        ("train", {"eval_every": 0}),
        ("train", {"vae_epochs": -1.0}),
        ("train", {"vae_max_steps": 0}),
        ("score", {"false_alarms": 0.0}),
        ("score", {"weights": (1.0, 2.0)}),
        ("frames", {"motion": "flow"}),
        ("frames", {"motion_blur": 4}),
    ],
)
def test_validation_refuses_configs_that_cannot_work(section, values, tmp_path):
    data = to_dict(tiny_config())
    data[section].update(values)
    with pytest.raises(ConfigError):
        from_dict(data)
    with pytest.raises(ConfigError):  # nor does init create a project with it
        Project.init(tmp_path / "p", with_overrides(tiny_config(), **{section: values}))
    assert not (tmp_path / "p").exists()


def test_read_config_of_broken_json_is_a_config_error(tmp_path):
    path = tmp_path / CONFIG_NAME
    path.write_text('{"schema_version": 1,')
    with pytest.raises(ConfigError, match="cannot read config"):
        read_config(path)
    assert issubclass(ConfigError, ProjectError)


@pytest.mark.parametrize("channels,lag", [(1, 1), (3, 2), (3, 0)])
def test_derived_model_configs_fit_together(channels, lag):
    cfg = with_overrides(tiny_config(), frames={"channels": channels, "motion_lag": lag})
    vc, mc = cfg.vae_config(), cfg.mdn_config()
    assert vc.in_channels == cfg.in_channels == channels * (2 if lag else 1)
    mu, _ = BetaVAE(vc).encode(torch.zeros(1, vc.in_channels, cfg.frames.height, cfg.frames.width))
    assert mc.cells == mu.shape[2] * mu.shape[3] and mc.latent_dim == mu.shape[1]
    assert (mc.hidden, mc.mixtures) == (cfg.mdn.hidden, cfg.mdn.mixtures)


def test_a_config_of_the_first_schema_is_read_in_todays_terms():
    old = {
        "schema_version": 1,
        "frames": {"width": 64, "height": 64},
        "train": {"vae_epochs": 8, "mdn_epochs": 8, "val_fraction": 0.15, "seed": 3},
        "score": {"threshold_quantile": 0.99, "weights": [1.0, 0.25, 0.1]},
    }
    cfg = from_dict(old)
    assert cfg.schema_version == SCHEMA_VERSION == 3
    assert cfg.frames.width == 64 and cfg.train.seed == 3 and cfg.train.vae_steps == ProjectConfig().train.vae_steps
    assert cfg.score.false_alarms == pytest.approx(0.01)
    assert cfg.score.weights.ordered(COMPONENTS) == (1.0, 0.25, 0.1, 0.0, 0.0, 0.0)
    bare = from_dict({"schema_version": 1})  # the defaults of its day where today's differ
    assert bare.frames.width == 64 and bare.score.weights.ordered(COMPONENTS) == (1.0, 0.25, 0.1, 0.0, 0.0, 0.0)
    # its models saw the signed difference: so must they when it is read again
    assert (cfg.frames.motion, cfg.frames.motion_gain, cfg.frames.motion_blur) == ("difference", 1.0, 1)
    assert ProjectConfig().frames.motion == "magnitude"


@pytest.mark.parametrize("source,expected", [((640, 360), 112), ((238, 158), 96), ((480, 640), 48), ((10, 1000), 8)])
def test_a_width_of_zero_follows_the_aspect_ratio(source, expected):
    frames = replace(ProjectConfig().frames, width=0)
    assert frames.height == 64
    assert frames.resolved(*source).width == expected  # rounded to a multiple of 8, at least 8
    assert with_overrides(tiny_config()).frames.resolved(*source) == tiny_config().frames  # set: kept


# -- every value is checked, and the error names it -------------------------------------------------


def test_every_config_value_has_a_rule_that_says_what_it_may_be():
    keys = flat(ProjectConfig())
    assert set(RULES) == set(keys)
    for key, rule in RULES.items():
        assert rule.allowed(), key


BAD_VALUES = {
    "frames.width": -1,
    "frames.height": 0,
    "frames.channels": 2,
    "frames.stride": 0,
    "frames.motion_lag": -1,
    "frames.motion": "flow",
    "frames.motion_gain": 0.0,
    "frames.motion_blur": 4,
    "frames.decode_timeout": 0,
    "vae.hidden": [8, 0],
    "vae.latent_channels": 0,
    "vae.beta": -0.1,
    "vae.coords": 1,
    "mdn.hidden": 0,
    "mdn.mixtures": 0,
    "mdn.cell_embedding": -1,
    "mdn.delta": "yes",
    "mdn.residual": None,
    "mdn.context": "left",
    "train.vae_steps": 0,
    "train.vae_epochs": -1.0,
    "train.vae_max_steps": 0,
    "train.mdn_steps": 2.5,
    "train.mdn_fast_margin": -0.5,
    "train.update_epochs": -1.0,
    "train.eval_every": 0,
    "train.patience": 0,
    "train.max_minutes": -1.0,
    "train.batch_size": 0,
    "train.lr": 0.0,
    "train.seq_len": 0,
    "train.holdout": 1.0,
    "train.block_seconds": 0.0,
    "train.replay_distill": -1.0,
    "train.replay_distill_encoder": -0.5,
    "train.ewc_strength": -1.0,
    "train.dream_temperature": 0.0,
    "train.keep_frames": 1.5,
    "train.seed": -1,
    "score.recon_planes": "some",
    "score.patch": 0,
    "score.patch_stride": 0,
    "score.top_k": 0,
    "score.weights.recon": -1.0,
    "score.weights.kl": "1",
    "score.weights.nll": float("inf"),
    "score.weights.still": None,
    "score.weights.frozen": -2.0,
    "score.weights.direction": -0.5,
    "score.shrink_seconds": float("nan"),
    "score.mdn_warmup": -1,
    "score.smooth": -1,
    "score.false_alarms": 0.5,
    "score.min_segment": 0,
    "score.batch_size": 0,
    "score.mask.width": -1,
    "score.mask.height": 1.5,
    "score.mask.polygons": [[[0, 0], [10, 0]]],  # two points are no polygon
    "accept.margin": -1.0,
    "accept.share": 1.0,
    "accept.epochs": 0.0,
    "accept.min_steps": 0,
    "accept.max_steps": "many",
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_value_out_of_its_range_is_refused_in_one_line_that_names_it_and_its_range(key):
    assert set(BAD_VALUES) == set(flat(ProjectConfig()))  # every value is tried
    data = to_dict(ProjectConfig())
    *sections, name = key.split(".")
    part = data
    for section in sections:
        part = part[section]
    part[name] = BAD_VALUES[key]
    with pytest.raises(ConfigError) as caught:
        from_dict(data)
    message = str(caught.value)
    assert message.startswith(f"{key} must be ") and "\n" not in message
    assert RULES[key].allowed() in message and repr(BAD_VALUES[key]) in message


# -- score weights by component name (schema 3) ----------------------------------------------------------


def test_score_weights_are_keyed_by_component_name():
    data = to_dict(ProjectConfig())
    assert data["score"]["weights"] == {
        "recon": 1.0,
        "kl": 1.0,
        "nll": 0.25,
        "still": 2.0,
        "frozen": 2.0,
        "direction": 0.5,
    }
    cfg = from_dict({**data, "score": {"weights": {"kl": 0.5}}})  # the others keep their defaults
    assert (cfg.score.weights.recon, cfg.score.weights.kl, cfg.score.weights.still) == (1.0, 0.5, 2.0)
    assert cfg.score.weights.ordered(COMPONENTS) == (1.0, 0.5, 0.25, 2.0, 2.0, 0.5)
    with pytest.raises(ConfigError, match="colour"):
        from_dict({**data, "score": {"weights": {"colour": 1.0}}})
    assert with_overrides(ProjectConfig(), score={"weights": {"nll": 0.0}}).score.weights.nll == 0.0
    assert with_overrides(ProjectConfig(), score={"weights": (1.0, 0.5, 0.25, 2.0)}).score.weights.kl == 0.5  # by order
    assert parse_overrides(["score.weights.kl=0.5", "vae.beta=0.3"]) == {
        "score": {"weights": {"kl": 0.5}},
        "vae": {"beta": 0.3},
    }


def test_a_config_of_the_second_schema_is_read_with_its_weights_by_name():
    old = {**to_dict(ProjectConfig()), "schema_version": 2}
    old["score"] = {**old["score"], "weights": [1.0, 0.5, 0.25, 3.0]}  # recon, kl, nll, still
    cfg = from_dict(old)
    assert cfg.schema_version == SCHEMA_VERSION == 3
    # release 0.3 had four components: those it did not have (frozen, direction) do not count in what it says
    assert cfg.score.weights.ordered(COMPONENTS) == (1.0, 0.5, 0.25, 3.0, 0.0, 0.0) and cfg.score.weights.still == 3.0
    every = {**old, "score": {**old["score"], "weights": [1.0, 0.5, 0.25, 3.0, 1.5, 0.7]}}
    assert from_dict(every).score.weights.frozen == 1.5 and from_dict(every).score.weights.direction == 0.7
    with pytest.raises(ConfigError, match="4 to 6 numbers"):
        from_dict({**old, "score": {**old["score"], "weights": [1.0, 0.5, 0.25]}})


def test_a_model_file_of_the_second_schema_loads_with_its_weights_by_name(trained_project, clips):
    path = trained_project / "models" / "v0001" / "model.pt"
    data = torch.load(path, weights_only=True)
    stored = data["config"]
    stored["schema_version"] = 2
    stored["score"]["weights"] = [1.0, 1.0, 0.25, 0.5]  # as release 0.3.3 wrote it
    torch.save(data, path)
    model = Detector.load(path)
    assert model.config.schema_version == 3 and model.config.score.weights.still == 0.5
    assert Detector.load(trained_project).version == "v0001"  # and it scores the project's footage
