"""Text encoders: MiniLM offline from its package, local Hugging Face folders, unit scale, cache."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from ctsynth_bench.text import (
    MissingPackageError,
    TextEncoder,
    TextEncoderError,
    encode_attributes,
    encode_prompts,
    load_text_encoder,
    text_cache_root,
)
from ctsynth_bench.text import _encoder as encoder_module

WORDS = "shape round irregular lobulated density low high organ liver lung kidney size small large"


def _save_tiny_bert(folder, seed: int = 0) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", *WORDS.split()]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    _save_tiny_bert(folder)
    return folder


@pytest.fixture
def encoder(tiny_bert, tmp_path):
    return load_text_encoder(str(tiny_bert), cache_dir=tmp_path / "cache")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_minilm_loads_offline_and_embeds_meaningfully(tmp_path):
    script = textwrap.dedent(
        """
        import json, torch
        torch.set_num_threads(1)
        from ctsynth_bench.text import load_text_encoder, encode_attributes
        enc = load_text_encoder("minilm", cache_dir=CACHE)
        texts = ["a tumour in the liver", "a lesion of the liver", "the train leaves at noon"]
        tokens, mask = enc.encode(texts)
        w = mask.float().unsqueeze(-1)
        pooled = (tokens * w).sum(1) / w.sum(1)
        cos = torch.nn.functional.cosine_similarity
        attrs = encode_attributes(enc, [{"shape": "round"}, {"shape": "irregular"}])
        print(json.dumps({
            "dim": enc.dim, "id": enc.id, "shape": list(tokens.shape),
            "related": cos(pooled[0], pooled[1], dim=0).item(),
            "unrelated": cos(pooled[0], pooled[2], dim=0).item(),
            "token_std": tokens[mask].std(-1, unbiased=False).tolist(),
            "attr_std": attrs.std(-1, unbiased=False).flatten().tolist(),
            "attr_rms_diff": (attrs[0, 0] - attrs[1, 0]).pow(2).mean().sqrt().item(),
        }))
        """
    ).replace("CACHE", repr(str(tmp_path)))
    env = {
        **__import__("os").environ,
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the library printed nothing of its own
    out = json.loads(lines[0])
    assert out["dim"] == 384 and out["shape"][0] == 3 and out["shape"][2] == 384
    assert out["id"].startswith("minilm-")
    # A real embedding: related sentences are closer than unrelated ones, by a margin.
    assert out["related"] > out["unrelated"] + 0.2, out
    assert all(abs(s - 1.0) < 1e-3 for s in out["token_std"] + out["attr_std"])
    # Different attribute values stay clearly apart after standardisation (0.05 before it).
    assert out["attr_rms_diff"] > 0.3, out


def test_local_folder_encoder_is_frozen_unit_scale_and_follows_text(encoder, tiny_bert):
    assert isinstance(encoder, TextEncoder)
    assert encoder.dim == 32 and encoder.device == torch.device("cpu")
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    tokens, mask = encoder.encode(["shape: round", "organ: liver size small", "lung"])
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape[:2] == mask.shape and tokens.shape[2] == 32
    assert mask.sum(1).tolist() == [5, 7, 3]  # [CLS] ... [SEP]
    assert not tokens.requires_grad
    valid = tokens[mask]
    torch.testing.assert_close(valid.mean(-1), torch.zeros(len(valid)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        valid.std(-1, unbiased=False), torch.ones(len(valid)), atol=1e-4, rtol=0
    )
    assert (tokens[~mask] == 0).all()
    with pytest.raises(TextEncoderError, match=r"must be a list of strings.*wrap"):
        encoder.encode("shape: round")
    a, _ = encoder.encode(["shape: round"])
    b, _ = encoder.encode(["shape: irregular"])
    assert (a - b).abs().max() > 0.1  # changing the text changes the tokens
    # Same folder, same id; other weights, other id.
    assert load_text_encoder(str(tiny_bert), use_cache=False).id == encoder.id


def test_id_changes_with_weights(tiny_bert, tmp_path):
    other = tmp_path / "other"
    _save_tiny_bert(other, seed=1)
    assert (
        load_text_encoder(other, use_cache=False).id
        != load_text_encoder(tiny_bert, use_cache=False).id
    )


def test_encode_attributes_one_unit_token_per_attribute(encoder):
    rows = [
        {"shape": "round", "organ": "liver", "size": "small"},
        {"size": "small", "organ": "liver", "shape": "irregular"},
    ]
    out = encode_attributes(encoder, rows)
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(2, 3), atol=1e-4, rtol=0)
    # Order follows the first row; only the changed attribute's token changes (by O(1) for
    # MiniLM, tested above; this random tiny BERT mixes one changed word into four tokens).
    assert torch.equal(out[0, 1], out[1, 1]) and torch.equal(out[0, 2], out[1, 2])
    assert (out[0, 0] - out[1, 0]).pow(2).mean().sqrt() > 0.15
    single = encode_attributes(encoder, {"shape": "round", "organ": "liver", "size": "small"})
    torch.testing.assert_close(single[0], out[0])
    with pytest.raises(TextEncoderError, match=r"attrs\[1\].*missing \['size'\]"):
        encode_attributes(encoder, [{"shape": "round", "size": "small"}, {"shape": "round"}])
    with pytest.raises(TextEncoderError, match="empty"):
        encode_attributes(encoder, [])


def test_encode_prompts(encoder):
    tokens, mask = encode_prompts(encoder, "large lesion in the lung")
    assert tokens.shape[0] == 1 and mask[0].all()
    tokens2, mask2 = encode_prompts(encoder, ["lung", "large lesion in the lung"])
    assert mask2.sum(1).tolist() == [3, mask.shape[1]]
    torch.testing.assert_close(tokens2[1], tokens[0])
    with pytest.raises(TextEncoderError, match=r"prompts\[1\] must be a string"):
        encode_prompts(encoder, ["ok", 3])


def test_cache_is_used_and_a_corrupt_entry_is_recomputed(encoder, tmp_path, monkeypatch):
    first, _ = encoder.encode(["shape: round", "organ: lung"])
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2
    assert files[0].is_relative_to(text_cache_root(tmp_path / "cache") / encoder.id)

    def broken(texts):
        raise AssertionError(f"network ran for cached texts {texts}")

    monkeypatch.setattr(encoder, "_run", broken)
    again, _ = encoder.encode(["organ: lung", "shape: round"])
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    monkeypatch.undo()
    for path in files:
        path.write_bytes(b"not a safetensors file")
    recomputed, _ = encoder.encode(["shape: round", "organ: lung"])
    assert torch.equal(recomputed, first)
    assert all(p.stat().st_size > 100 for p in files)  # rewritten
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CTSYNTH_CACHE", str(tmp_path / "env"))
    assert text_cache_root() == tmp_path / "env" / "text-embeddings"
    assert text_cache_root(tmp_path / "x") == tmp_path / "x" / "text-embeddings"


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(TextEncoderError, match="did you mean 'minilm'"):
        load_text_encoder("minlm")
    with pytest.raises(TextEncoderError, match=r"config\.json"):
        load_text_encoder(tmp_path)


def test_missing_package_is_one_line_with_install_line(monkeypatch):
    fake = encoder_module._Named(
        module="ctsynth_no_such_package", subdir="model", pip="no-such-package", max_length=8
    )
    monkeypatch.setitem(encoder_module._NAMED, "ghost", fake)
    with pytest.raises(MissingPackageError) as err:
        load_text_encoder("ghost")
    message = str(err.value)
    assert "\n" not in message and "pip install no-such-package" in message
