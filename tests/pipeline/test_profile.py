"""Colour profiles: fitting recovers a known transform, the JSON round trip, refusals, and
`convert --profile` on a synthetic DNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from raw2rgb.pipeline import develop, profile, rawio
from tests.conftest import FLAT, cli


def _poly3_target(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.stack(profile.poly3_terms(*x.T), 1) @ coef


def test_a_profile_fitted_on_a_known_cubic_recovers_it():
    rng = np.random.default_rng(0)
    src = rng.random((20000, 3))
    coef = np.zeros((20, 3))
    coef[1:4] = [[0.9, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.05, 0.85]]  # a colour matrix
    coef[0] = [0.02, 0.01, 0.03]
    coef[4:7] = np.diag([-0.1, 0.05, -0.08])  # and a tone curve per channel
    fitted, n = profile.fit(src, _poly3_target(src, coef), "poly3")
    assert n == 0
    np.testing.assert_allclose(np.array(fitted), coef, atol=1e-9)


def test_a_lut_follows_a_smooth_transform_where_data_is_and_where_it_is_not():
    rng = np.random.default_rng(1)
    src = rng.random((30000, 3)) * 0.8  # nothing above 0.8: the LUT's top nodes follow their neighbours
    f = lambda x: np.clip(x ** 0.8 * np.array([1.05, 1.0, 0.9]), 0, 1)  # noqa: E731
    nodes, n = profile.fit(src, f(src), "lut", lut_size=9)
    lut = profile.Profile(model="lut", coefficients=nodes, lut_size=n)
    test = rng.random((2000, 3)) * 0.8
    assert np.abs(profile.apply(lut, test) - f(test)).mean() < 0.004
    top = np.full((1, 3), 0.9)
    assert np.abs(profile.apply(lut, top) - f(top)).max() < 0.05


def test_the_json_round_trips(tmp_path):
    p = profile.Profile(model="poly3", coefficients=tuple((float(i), 0.5, -1.0) for i in range(20)), scale=2,
                        cameras=("Make Model",), fitted_on={"split": "train", "pixels": 10})
    profile.save(p, tmp_path / "p.json")
    assert profile.load(tmp_path / "p.json") == p
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "raw2rgb-profile"


@pytest.mark.parametrize("content,reason", [(b"{not json", "not a readable profile"),
                                            (b'{"kind": "other"}', "not a raw2rgb colour profile"),
                                            (b'{"kind": "raw2rgb-profile", "format": 3, "model": "poly3", '
                                             b'"coefficients": [[1, 2, 3]]}', "malformed profile"),
                                            (b'{"kind": "raw2rgb-profile", "format": 3, "model": "poly3", '
                                             b'"coefficients": 7}', "malformed profile")])
def test_a_corrupt_profile_is_refused_naming_the_file(tmp_path, content, reason):
    (tmp_path / "bad.json").write_bytes(content)
    with pytest.raises(profile.ProfileError, match=f"bad.json: {reason}"):
        profile.load(tmp_path / "bad.json")


def _swap_red_blue(camera: str, scale: int = 2) -> profile.Profile:
    coef = np.zeros((20, 3))
    coef[1, 2] = coef[3, 0] = coef[2, 1] = 1.0  # out R = in B, out G = in G, out B = in R
    return profile.Profile(model="poly3", coefficients=tuple(map(tuple, coef)), scale=scale, cameras=(camera,))


def test_convert_with_a_profile_gives_the_profiles_colours(make_dng, tmp_path):
    """A flat DNG: the classical pipeline's colour with red and blue exchanged by the profile."""
    dng = make_dng("flat.dng", "GRBG", make="Acme", model="One")
    profile.save(_swap_red_blue("Acme One"), tmp_path / "swap.json")
    r = cli("convert", dng, "-o", tmp_path / "out", "--profile", tmp_path / "swap.json")
    assert r.exit_code == 0, r.output
    got = np.array(Image.open(tmp_path / "out" / "flat.png"))
    frame = rawio.read_raw(dng)
    want = develop.develop(frame.packed(np.float32), frame.wb_gains, frame.cam_to_rgb, scale=2)
    inner = got[4:-4, 4:-4].reshape(-1, 3).astype(int)
    expect = np.rint(want[4:-4, 4:-4, ::-1].reshape(-1, 3) * 255).astype(int)
    assert np.abs(inner - expect).max() <= 1
    assert FLAT["B"] > FLAT["R"] and inner[:, 0].mean() > inner[:, 2].mean()  # blue-heavy scene comes out red


def test_profiles_of_another_scale_or_camera_are_refused_in_one_line(make_dng, tmp_path):
    dng = make_dng("flat.dng", "RGGB", make="Acme", model="One")
    profile.save(_swap_red_blue("Acme One", scale=1), tmp_path / "s1.json")
    r = cli("convert", dng, "-o", tmp_path / "a", "--profile", tmp_path / "s1.json")
    assert r.exit_code == 1 and "s1.json: fitted at output scale 1" in r.output and "Traceback" not in r.output
    profile.save(_swap_red_blue("Other Camera"), tmp_path / "other.json")
    r = cli("convert", dng, "-o", tmp_path / "b", "--profile", tmp_path / "other.json")
    assert r.exit_code == 1 and "other.json: fitted on Other Camera, not on Acme One" in r.output
    (tmp_path / "junk.json").write_text("junk")
    r = cli("convert", dng, "-o", tmp_path / "c", "--profile", tmp_path / "junk.json")
    assert r.exit_code == 1 and "junk.json: not a readable profile" in r.output


def _identity(scale: int = 2, wb=None) -> profile.Profile:
    from raw2rgb.pipeline.whitebalance import WhiteBalance

    coef = np.zeros((20, 3))
    coef[1:4] = np.eye(3)
    return profile.Profile(model="poly3", coefficients=tuple(map(tuple, coef)), scale=scale,
                           white_balance=wb or WhiteBalance())


def test_convert_of_a_mosaic_without_metadata_follows_the_profiles_white_balance_rule(tmp_path):
    """A ZRR mosaic PNG: the dataset rule renders it with the profile's gains, a frame rule with the
    whole frame's estimate; the note says which."""
    from raw2rgb.pipeline import synth, whitebalance
    from raw2rgb.pipeline.whitebalance import WhiteBalance

    synth.zrr_dataset(tmp_path / "zrr", size=(128, 192), crop=128, scenes=("coffee",))
    src = tmp_path / "in" / "crop.png"
    src.parent.mkdir()
    src.write_bytes((tmp_path / "zrr" / "train" / "huawei_raw" / "0.png").read_bytes())
    packed = rawio.read_raw(src).packed(np.float32)
    for name, wb, gains in (("dataset", WhiteBalance("dataset", (1.7, 1.0, 1.3)), np.array([1.7, 1.0, 1.3])),
                            ("frame", WhiteBalance("frame-grey-edge"), whitebalance.grey_edge(packed))):
        profile.save(_identity(wb=wb), tmp_path / f"{name}.json")
        r = cli("convert", src, "-o", tmp_path / name, "--profile", tmp_path / f"{name}.json")
        assert r.exit_code == 0, r.output
        got = np.array(Image.open(tmp_path / name / "crop.png")).astype(int)
        want = np.rint(develop.develop(packed, gains, None, scale=2) * 255).astype(int)
        assert np.abs(got - want).max() <= 1, name
        note = json.loads((tmp_path / name / "manifest.json").read_text())
        assert wb.rule in json.dumps(note)


def test_a_profile_of_before_the_white_balance_rules_is_refused_naming_the_fix(tmp_path):
    data = {"kind": "raw2rgb-profile", **_identity().to_json(), "format": 1}
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(profile.ProfileError, match="old.json: profile format is not 3; refit it"):
        profile.load(tmp_path / "old.json")


def test_a_profile_of_format_2_renders_as_it_was_fitted_on_the_clipped_rendering(tmp_path):
    """Format 2 profiles (a run's profile.json of before) were fitted on the clipped rendering: they
    load, and take it; a profile of format 3 without its gamut is incomplete."""
    data = {"kind": "raw2rgb-profile", **_identity().to_json(), "format": 2}
    del data["gamut"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert profile.load(tmp_path / "old.json").gamut == "clip"
    assert profile.load(profile.save(_identity(), tmp_path / "new.json")).gamut == "extended"
    (tmp_path / "bad.json").write_text(json.dumps({**data, "format": 3}))
    with pytest.raises(profile.ProfileError, match="Profile.gamut: missing"):
        profile.load(tmp_path / "bad.json")
    fitted = _identity(wb=profile.WhiteBalance("dataset", (2.0, 1.0, 1.5)))
    saved = profile.load(profile.save(fitted, tmp_path / "p.json"))
    assert saved.white_balance.rule == "dataset" and saved.white_balance.gains == (2.0, 1.0, 1.5)
