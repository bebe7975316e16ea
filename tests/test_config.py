import pytest

from dift_fast import PRESETS, DiftConfig


def test_presets_match_the_spec():
    spair = DiftConfig.from_preset("spair")
    assert (spair.image_size, spair.t, spair.up_ft_index, spair.ensemble_size) == ((768, 768), 261, 1, 8)
    assert DiftConfig() == DiftConfig.from_preset("spair").replace(preset=None)
    hp = DiftConfig.from_preset("hpatches")
    assert (hp.image_size, hp.t, hp.up_ft_index, hp.ensemble_size, hp.prompt) == ((768, 768), 0, 2, 8, "")
    davis = DiftConfig.from_preset("davis")
    assert (davis.t, davis.up_ft_index, davis.ensemble_size) == (51, 2, 8)
    assert set(PRESETS) == {"spair", "hpatches", "davis"}


def test_overrides_beat_presets():
    cfg = DiftConfig.from_preset("hpatches", t=10, ensemble_size=2)
    assert (cfg.t, cfg.ensemble_size, cfg.up_ft_index) == (10, 2, 2)


def test_frozen_and_round_trips():
    cfg = DiftConfig(image_size=(512, 256), prompt="a cat", seed=7)
    with pytest.raises(AttributeError):
        cfg.t = 3  # type: ignore[misc]
    assert DiftConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("t", 1000, "0..999"),
        ("t", -1, "0..999"),
        ("up_ft_index", 4, "0, 1, 2, 3"),
        ("ensemble_size", 0, ">= 1"),
        ("image_size", (770, 768), "multiples of 8"),
        ("dtype", "fp8", "fp32, bf16, fp16"),
        ("batch_size", 0, ">= 1"),
        ("backend", "jax", "torch"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(field, value, needle):
    with pytest.raises(ValueError) as err:
        DiftConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg and needle in msg


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="spair, hpatches, davis"):
        DiftConfig.from_preset("imagenet")
