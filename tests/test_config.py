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
    assert set(PRESETS) == {"spair", "hpatches", "davis", "adm-spair", "adm-hpatches", "adm-davis", "cleandift"}
    assert all(DiftConfig.from_preset(p).backbone == "sd" for p in ("spair", "hpatches", "davis"))


def test_adm_and_cleandift_presets_match_the_issue():
    """Issue 15 / spec §6: DIFT_adm's three protocols and CleanDIFT's one."""
    adm = DiftConfig.from_preset("adm-spair", model="x.pt")
    assert (adm.backbone, adm.image_size, adm.t, adm.up_ft_index, adm.ensemble_size) == ("adm", (512, 512), 101, 4, 8)
    hp = DiftConfig.from_preset("adm-hpatches", model="x.pt")
    assert (hp.image_size, hp.t, hp.up_ft_index, hp.ensemble_size) == ((768, 768), 41, 11, 4)
    davis = DiftConfig.from_preset("adm-davis", model="x.pt")
    assert (davis.t, davis.up_ft_index, davis.ensemble_size) == (51, 7, 4)
    clean = DiftConfig.from_preset("cleandift")
    assert (clean.backbone, clean.image_size, clean.t, clean.up_ft_index, clean.ensemble_size) == (
        "cleandift", (768, 768), 261, 1, 1)
    assert clean.unet_weights == "CompVis/cleandift/cleandift_sd21_unet.safetensors"


@pytest.mark.parametrize(
    ("changes", "field", "needle"),
    [
        ({"backbone": "adm", "up_ft_index": 18}, "up_ft_index", "0..17"),
        ({"backbone": "adm", "up_ft_index": 4, "image_size": (520, 512)}, "image_size", "multiples of 32"),
        ({"backbone": "adm", "up_ft_index": 4, "image_size": None}, "image_size", "multiples of 32"),
        ({"backbone": "adm", "up_ft_index": 4, "prompt": "a cat"}, "prompt", "unconditional"),
        ({"backbone": "adm", "up_ft_index": 4, "unet_weights": "w.safetensors"}, "unet_weights", "no SD UNet"),
        ({"backbone": "cleandift", "up_ft_index": 4}, "up_ft_index", "0, 1, 2, 3"),
        ({"backbone": "sd3"}, "backbone", "sd, cleandift, adm"),
    ],
)
def test_validation_is_per_backbone(changes, field, needle):
    with pytest.raises(ValueError) as err:
        DiftConfig(**{"image_size": (512, 512), **changes})
    msg = str(err.value)
    assert f"DiftConfig.{field}=" in msg and needle in msg


def test_up_ft_index_keeps_its_meaning_for_sd():
    """The field keeps DIFT's name for both backbones: SD's up block, ADM's output block."""
    assert DiftConfig(up_ft_index=3).up_ft_index == 3
    assert DiftConfig(backbone="adm", model="x.pt", image_size=(512, 512), up_ft_index=17).up_ft_index == 17


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
