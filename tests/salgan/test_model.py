"""SalGAN: architecture, the importer against Lasagne's semantics, pre/post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raw2rgb.salgan import weights as w
from raw2rgb.salgan.model import BGR_MEAN, PARAMETERS, SalGAN, postprocess, predict, preprocess


def test_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in SalGAN().parameters()) == PARAMETERS == 31_787_009
    assert len(SalGAN().convs()) == 27


def test_bottleneck_and_output_shapes():
    m = SalGAN().eval()
    with torch.no_grad():
        x = torch.zeros(2, 3, 192, 256)
        assert m.encoder(x).shape == (2, 512, 12, 16)
        assert m(x).shape == (2, 1, 192, 256)
    with pytest.raises(ValueError, match=r"\(1, 3, 100, 100\)"):
        m(torch.zeros(1, 3, 100, 100))


# -- an independent reference: Lasagne's layers written from their definitions, in numpy -----------

def _conv_lasagne(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, flip_filters: bool) -> np.ndarray:
    """Lasagne Conv2DLayer, pad='same', stride 1. flip_filters=True is true convolution:
    out[o, y, x] = sum_{i,u,v} W[o, i, u, v] * in[i, y + c - u, x + c - v] (c = k // 2), and
    flip_filters=False is cross-correlation: ... in[i, y - c + u, x - c + v]."""
    k = kernel.shape[-1]
    c = k // 2
    _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (c, c), (c, c)))
    out = np.zeros((kernel.shape[0], h, wd))
    for u in range(k):
        for v in range(k):
            dy, dx = (c - u, c - v) if flip_filters else (u - c, v - c)
            window = xp[:, c + dy : c + dy + h, c + dx : c + dx + wd]
            out += np.einsum("oi,ihw->ohw", kernel[:, :, u, v], window)
    return out + bias[:, None, None]


def _reference_forward(rgb: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """rgb (3, H, W) in 0-255 → sigmoid saliency (H, W), the way the Theano model computed it."""
    x = rgb[::-1].astype(np.float64) - np.array(BGR_MEAN)[:, None, None]  # RGB → BGR, mean off
    relu = lambda a: np.maximum(a, 0)
    pool = lambda a: a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2).max(axis=(2, 4))
    up = lambda a: a.repeat(2, axis=1).repeat(2, axis=2)
    idx = 0

    def conv(a, flip):
        nonlocal idx
        out = _conv_lasagne(a, arrays[f"arr_{idx}"].astype(np.float64),
                            arrays[f"arr_{idx + 1}"].astype(np.float64), flip)
        idx += 2
        return out

    for block in (2, 2, 3, 3, 3):  # VGG16, cross-correlation (flip_filters=False)
        for _ in range(block):
            x = relu(conv(x, flip=False))
        if idx < 26:
            x = pool(x)
    for i, block in enumerate((3, 3, 3, 2, 2)):  # decoder, Lasagne's default flip_filters=True
        for _ in range(block):
            x = relu(conv(x, flip=True))
        if i < 4:
            x = up(x)
    x = conv(x, flip=True)
    return 1 / (1 + np.exp(-x[0]))


def test_imported_weights_reproduce_lasagne_forward(npz_file, npz_arrays):
    model = SalGAN()
    model.load_state_dict(w.import_npz(npz_file))
    model = model.double().eval()
    rgb = np.random.default_rng(1).uniform(0, 255, (3, 32, 48))
    want = _reference_forward(rgb, npz_arrays)
    with torch.no_grad():
        x = preprocess(torch.from_numpy(rgb.copy())[None], size=(32, 48)).double()
        got = model(x)[0, 0].numpy()
    assert want.std() > 1e-3  # a non-trivial map
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The comparison can fail: importing without the decoder flip (the public converter's bug)
    # gives another map.
    naive = SalGAN().double().eval()
    for i, conv in enumerate(naive.convs()):
        conv.weight.data = torch.from_numpy(npz_arrays[f"arr_{2 * i}"].astype(np.float64))
        conv.bias.data = torch.from_numpy(npz_arrays[f"arr_{2 * i + 1}"].astype(np.float64))
    with torch.no_grad():
        assert np.abs(naive(x)[0, 0].numpy() - want).max() > 1e-3


def test_importer_refuses_other_files(tmp_path, npz_arrays):
    short = tmp_path / "short.npz"
    np.savez(short, **{k: v for k, v in list(npz_arrays.items())[:10]})
    with pytest.raises(w.WeightsError, match="expected 54 arrays"):
        w.import_npz(short)
    wrong = dict(npz_arrays)
    wrong["arr_30"] = wrong["arr_30"][:, :, :2]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **wrong)
    with pytest.raises(w.WeightsError, match="arr_30 has shape"):
        w.import_npz(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(w.WeightsError, match="not a readable .npz"):
        w.import_npz(junk)


def test_saved_weights_load_with_weights_only(weights_file, npz_file, tmp_path):
    model = w.load_salgan(weights_file)
    state = w.import_npz(npz_file)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert not model.training
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, other)
    with pytest.raises(w.WeightsError, match="not SalGAN weights"):
        w.load_salgan(other)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(w.WeightsError, match="not a readable PyTorch"):
        w.load_salgan(text)


def test_lookup_order_and_message(tmp_path, monkeypatch, weights_file):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_VAR, raising=False)
    with pytest.raises(w.WeightsError) as info:
        w.find_weights()
    msg = str(info.value)
    assert "--weights" in msg and w.ENV_VAR in msg and str(tmp_path / "cache" / "raw2rgb" / "salgan.pt") in msg
    assert "gen_modelWeights0090.npz" in msg and "import-weights" in msg
    cached = tmp_path / "cache" / "raw2rgb" / "salgan.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert w.find_weights() == cached
    monkeypatch.setenv(w.ENV_VAR, str(weights_file))
    assert w.find_weights() == weights_file
    assert w.find_weights(cached) == cached
    with pytest.raises(w.WeightsError, match="not found"):
        w.find_weights(tmp_path / "nope.pt")


def test_preprocess_bgr_mean_and_size():
    rgb = torch.zeros(1, 3, 384, 512)
    rgb[:, 0] = 200  # red
    x = preprocess(rgb)
    assert x.shape == (1, 3, 192, 256)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 200 - 123.68]))


def test_postprocess_and_predict_shapes_and_range(weights_file):
    maps = postprocess(torch.rand(2, 1, 192, 256), (300, 451))
    assert maps.shape == (2, 300, 451) and maps.dtype == torch.uint8
    flat = postprocess(torch.full((1, 1, 192, 256), 0.4), (50, 60))
    assert torch.all(flat == 102)  # resize and blur keep a constant: 0.4 * 255 = 102
    model = w.load_salgan(weights_file)
    out = predict(model, torch.randint(0, 256, (2, 3, 100, 140), dtype=torch.uint8))
    assert out.shape == (2, 100, 140) and out.dtype == torch.uint8
    assert int(out.max()) > int(out.min())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_predictor_matches_eager_predict():
    from raw2rgb.salgan.model import Predictor

    torch.manual_seed(0)
    model = SalGAN().cuda().eval()
    predictor = Predictor(model)
    for shape in [(8, 3, 192, 256), (8, 3, 192, 256), (3, 3, 100, 140)]:
        rgb = torch.randint(0, 256, shape, dtype=torch.uint8)
        torch.testing.assert_close(predictor(rgb), predict(model, rgb), rtol=0, atol=0)
    assert len(predictor._graphs) == 2
