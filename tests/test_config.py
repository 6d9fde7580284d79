import pytest

from shg.config import ConfigError, RunConfig, dump_toml, load_config


def test_required_keys_exist_and_overrides_coerce(tmp_path):
    cfg = load_config("configs/tiny.toml", ["model.stacks=3", "train.max_steps=7",
                                            "run_dir=runs/x", "optim.lr=1", "mixed_precision=bf16",
                                            "eval.thresholds=[0.1, 0.2]", "eval.select=bbox@0.2"])
    assert cfg.model.stacks == 3 and cfg.train.max_steps == 7 and cfg.run_dir == "runs/x"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.mixed_precision == "bf16" and cfg.eval.thresholds == [0.1, 0.2]
    # every key the README's table names reaches the config from the command line
    for key, value, expected in (("data.shards", "/x/shards", "/x/shards"),
                                 ("model.features", "48", 48), ("train.batch_size", "3", 3),
                                 ("train.seed", "11", 11), ("checkpoint.every_steps", "7", 7),
                                 ("data.augment_on", "device", "device"),
                                 ("eval.thresholds", "[0.5]", [0.5])):
        section, name = key.split(".")
        one = load_config("configs/tiny.toml", [f"{key}={value}", "eval.select=bbox@0.5"]
                          if key == "eval.thresholds" else [f"{key}={value}"])
        assert getattr(getattr(one, section), name) == expected, key
    again = tmp_path / "c.toml"
    again.write_text(dump_toml(cfg))
    assert load_config(again) == cfg


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key model\.stack;.*stacks, features"):
        load_config(None, ["model.stack=3"])
    with pytest.raises(ConfigError, match="unknown key bogus; valid keys: run_dir"):
        load_config(None, ["bogus=1"])


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=0", "batch_size must be >= 1"),
    ("mixed_precision=fp8", "mixed_precision must be one of"),
    ("model.stacks=two", "model.stacks must be int"),
    ("checkpoint.keep=1", "keep must be >= 2"),
    ("eval.select=loss", "eval.select"),
    ("optim.name=lbfgs", "optim.name must be one of"),
    ("ae.output=tanh", "ae.output must be one of"),
    ("model.bottleneck_features=3", "bottleneck_features must be 0"),
    ("task=ae", "task=ae needs ae.shg_from"),
    ("eval.select=bbox@0.3", "needs 0.3 in eval.thresholds"),
])
def test_bad_values_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nstacks = 2")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    assert RunConfig().model.stacks == 8
