"""factory.models on the tiny preset: presets, tokenizer, identity bank, fingerprints, generation, LoRA."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from factory.errors import FactoryError
from factory.models import (
    IDENTITY,
    SCHEDULERS,
    IdentityBank,
    ModelRef,
    TextToImage,
    build_clip_tokenizer,
    build_preset,
    preset_path,
    random_identity_vector,
)
from factory.models.presets import PRESET_VERSION, preset_configs
from factory.models.tokenizer import CAMERA_CODES, DEFAULT_WORDS

SMALL = {"steps": 2, "width": 32, "height": 64}  # SD needs multiples of 8; latents are 16 x 32
PROMPT = f"a w5eq photo of a {IDENTITY} person"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("factory-cache")


@pytest.fixture(autouse=True)
def _one_thread():
    """As the actors generate (`actor_device`): one torch thread per CPU they hold, here one. A row's bytes not
    depending on the rest of its batch holds at that setting; with several threads the work is split by batch
    size and the last bits can differ. (tests/conftest.py gives the thread count back afterwards.)"""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(cache) -> TextToImage:
    return TextToImage.load(ModelRef(preset="tiny"), cache_dir=cache)


@pytest.fixture(scope="module")
def vectors(model) -> list[np.ndarray]:
    scale = model.typical_token_norm()
    return [random_identity_vector(seed, model.embedding_dim, scale) for seed in range(4)]


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


# presets


def test_tiny_preset_builds_identical_bytes_and_is_small(tmp_path):
    a, b = build_preset("tiny", tmp_path / "a"), build_preset("tiny", tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert sum((a / f).stat().st_size for f in files) < 20e6


def test_preset_is_cached_under_factory_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path))
    model = TextToImage.load(ModelRef(preset="tiny"))
    folder = tmp_path / "models" / f"tiny-v{PRESET_VERSION}"
    assert (folder / "model_index.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no staging left behind
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert preset_path("tiny") == folder and (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert model.pipe.tokenizer.model_max_length == 77
    assert model.embedding_dim == 32 and model.pipe.vae_scale_factor == 2


def test_a_cached_preset_without_the_slow_tokenizer_files_gets_them(tmp_path, monkeypatch):
    """A preset an earlier release cached under transformers 5 (tokenizer.json only) still loads under 4.x."""
    from transformers import CLIPTokenizer

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path))
    tokenizer = preset_path("tiny") / "tokenizer"
    expected = {name: (tokenizer / name).read_bytes() for name in ("vocab.json", "merges.txt")}
    for name in expected:
        (tokenizer / name).unlink()
    assert preset_path("tiny") / "tokenizer" == tokenizer
    assert {name: (tokenizer / name).read_bytes() for name in expected} == expected
    assert sorted(p.name for p in tokenizer.iterdir() if p.name.startswith("tmp")) == []  # nothing left aside
    assert CLIPTokenizer.from_pretrained(tokenizer).encode("a red shirt", add_special_tokens=False) == \
        CLIPTokenizer(str(tokenizer / "vocab.json"), str(tokenizer / "merges.txt")).encode("a red shirt",
                                                                                          add_special_tokens=False)


def test_sd15_architecture_without_weights(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = preset_configs("sd15", build_clip_tokenizer(tmp_path))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text"]))
    assert round(_parameters(unet) / 1e6, 1) == 859.5
    assert round(_parameters(vae) / 1e6, 1) == 83.7
    assert text.config.hidden_size == 768 and text.config.num_hidden_layers == 12
    assert text.get_input_embeddings().weight.shape[0] == text.config.vocab_size
    assert next(unet.parameters()).is_meta


def test_unknown_preset():
    with pytest.raises(FactoryError, match="unknown model preset 'big'"):
        preset_path("big")


# tokenizer


def test_tokenizer_words_are_single_tokens_and_codes_split_like_clip(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path)
    for word in DEFAULT_WORDS:
        if word.isalpha():
            assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    # CLIP gives every digit its own token, so a code is its letter runs and digits, each one token.
    assert tokenizer.tokenize("W5Eq") == ["w</w>", "5</w>", "eq</w>"]
    for code in CAMERA_CODES:
        assert len(tokenizer.tokenize(code)) == len(re.findall(r"[a-z]+|\d", code)), code


def test_tokenizer_is_clip_format_and_round_trips(tmp_path):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = build_clip_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    symbols = [bytes_to_unicode()[b] for b in range(256)]
    assert list(vocab)[:512] == symbols + [s + "</w>" for s in symbols]
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert (tmp_path / "merges.txt").read_text().splitlines()[0] == "#version: 0.2"
    assert build_clip_tokenizer(tmp_path / "again").get_vocab() == tokenizer.get_vocab()

    text = "A Photo of a Zebra wearing an Éclair hat"
    ids = tokenizer(text).input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    assert len(tokenizer.tokenize("zebra")) > 1  # unknown word: still tokenized, in pieces

    batch = tokenizer(
        ["a photo", "x " * 200], padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    )
    assert [len(row) for row in batch.input_ids] == [77, 77]


# identity bank


def test_bank_round_trip_and_missing_identity(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    bank = IdentityBank.from_vectors([534, 535, 1544], vectors, sources=[("market", 2), None, ("market", 9)])
    bank.save(tmp_path / "bank.safetensors")
    loaded = IdentityBank.load(tmp_path / "bank.safetensors")
    assert loaded.identities == [534, 535, 1544] and loaded.dim == 8
    assert loaded.tokens == ["<class_534>", "<class_535>", "<class_1544>"]
    assert loaded.sources == [("market", 2), None, ("market", 9)]
    assert np.array_equal(loaded.vector(535), vectors[1])
    assert loaded.source(1544) == ("market", 9) and loaded.source(535) is None
    assert np.array_equal(loaded.vector_for_source("market", 9), vectors[2])
    with pytest.raises(FactoryError, match="has no identity learned from market pid 3"):
        loaded.vector_for_source("market", 3)
    with pytest.raises(FactoryError) as e:
        loaded.vector(17)
    assert str(e.value) == f"identity 17 is not in bank {tmp_path / 'bank.safetensors'} (it has 534..535, 1544)"


def test_bank_of_several_tokens_per_identity(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    IdentityBank.from_vectors([4, 9], vectors).save(tmp_path / "bank.safetensors")
    loaded = IdentityBank.load(tmp_path / "bank.safetensors")
    assert loaded.dim == 8 and loaded.tokens_per_identity == 3
    assert np.array_equal(loaded.vector(9), vectors[1])
    with pytest.raises(FactoryError, match=r"expected \[2, dim\] or \[2, tokens, dim\]"):
        IdentityBank.from_vectors([4, 9], np.zeros((2, 3, 8, 1)))


def test_bank_rejects_bad_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FactoryError, match="not a valid bank file"):
        IdentityBank.load(tmp_path / "junk.safetensors")
    with pytest.raises(FactoryError, match="does not exist"):
        IdentityBank.load(tmp_path / "absent.safetensors")
    with pytest.raises(FactoryError, match="an identity appears more than once"):
        IdentityBank.from_vectors([1, 1], np.zeros((2, 4)))
    with pytest.raises(FactoryError, match="source appears more than once"):
        IdentityBank.from_vectors([1, 2], np.zeros((2, 4)), sources=[("market", 5), ("market", 5)])


def test_bank_dim_must_match_model(tmp_path, cache):
    IdentityBank.from_vectors([1], np.zeros((1, 768))).save(tmp_path / "bank.safetensors")
    with pytest.raises(FactoryError, match="768-d vectors but the model's token embeddings are 32-d"):
        TextToImage.load(ModelRef(preset="tiny", bank=str(tmp_path / "bank.safetensors")), cache_dir=cache)


# references and fingerprints


def test_model_ref_needs_exactly_one_base():
    with pytest.raises(ValueError, match="exactly one of preset or path"):
        ModelRef()
    with pytest.raises(ValueError, match="exactly one of preset or path"):
        ModelRef(preset="tiny", path="/x")
    with pytest.raises(ValueError):
        ModelRef(preset="tiny", weights="x")


def test_fingerprint_follows_contents_not_location(tmp_path):
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"a" * 100)
    ref = ModelRef(preset="tiny", lora=str(lora))
    assert ref.fingerprint() == ModelRef(preset="tiny", lora=str(lora)).fingerprint()
    assert ref.fingerprint() != ModelRef(preset="tiny").fingerprint()
    before = ref.fingerprint()
    lora.write_bytes(b"a" * 99 + b"b")
    assert ref.fingerprint() != before

    a, b = build_preset("tiny", tmp_path / "a"), build_preset("tiny", tmp_path / "b")
    assert ModelRef(path=str(a)).fingerprint() == ModelRef(path=str(b)).fingerprint()
    (b / "unet" / "config.json").write_text((b / "unet" / "config.json").read_text() + " ")
    assert ModelRef(path=str(a)).fingerprint() != ModelRef(path=str(b)).fingerprint()


def test_missing_files_are_one_line_errors(tmp_path, cache):
    with pytest.raises(FactoryError) as e:
        TextToImage.load(ModelRef(path=str(tmp_path / "nowhere")))
    assert str(e.value).startswith(f"model path {tmp_path / 'nowhere'} does not exist (") and "\n" not in str(e.value)
    with pytest.raises(FactoryError, match="model path org/absent-model does not exist"):
        ModelRef(path="org/absent-model").fingerprint()
    with pytest.raises(FactoryError, match="LoRA file .* does not exist"):
        TextToImage.load(ModelRef(preset="tiny", lora=str(tmp_path / "x.safetensors")), cache_dir=cache)


# generation


def test_generate_is_deterministic_and_sensitive_to_seed_and_identity(model, vectors):
    first = pixels(model.generate([PROMPT] * 2, vectors[:2], [0, 1], **SMALL))
    again = pixels(model.generate([PROMPT] * 2, vectors[:2], [0, 1], **SMALL))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert first[0].shape == (64, 32, 3)
    other_seed = pixels(model.generate([PROMPT], vectors[:1], [7], **SMALL))[0]
    other_identity = pixels(model.generate([PROMPT], vectors[2:3], [0], **SMALL))[0]
    assert not np.array_equal(first[0], other_seed)
    assert not np.array_equal(first[0], other_identity)


def test_row_does_not_depend_on_the_rest_of_its_batch(model, vectors):
    ab = pixels(model.generate([PROMPT] * 2, vectors[:2], [0, 1], **SMALL))
    ac = pixels(model.generate([PROMPT, "a 8mip photo"], [vectors[0], None], [0, 5], **SMALL))
    ca = pixels(model.generate([PROMPT] * 2, [vectors[3], vectors[0]], [9, 0], **SMALL))
    assert np.array_equal(ab[0], ac[0])
    assert np.array_equal(ab[0], ca[1])  # another slot token and row, same embedding: same image


def test_an_identity_of_several_tokens_draws_what_its_words_draw(model, vectors):
    """K slot rows holding the embeddings of K words give exactly the image of the prompt with those words."""
    ids = model.pipe.tokenizer.encode("red shirt blue pants", add_special_tokens=False)
    assert len(ids) == 4
    rows = model.pipe.text_encoder.get_input_embeddings().weight[ids].detach().numpy().copy()
    by_words = pixels(model.generate(["a w5eq photo of a red shirt blue pants person"], [None], [0], **SMALL))[0]
    by_slots = pixels(model.generate([PROMPT, PROMPT], [vectors[1], rows], [3, 0], **SMALL))[1]
    assert np.array_equal(by_words, by_slots)
    other = rows.copy()
    other[0] = vectors[0]  # one token changed: another identity
    assert not np.array_equal(by_slots, pixels(model.generate([PROMPT], [other], [0], **SMALL))[0])


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs_at_the_requested_size(model, vectors, scheduler):
    images = model.generate([PROMPT], vectors[:1], [0], scheduler=scheduler, steps=3, width=64, height=128)
    assert [image.size for image in images] == [(64, 128)]
    assert np.asarray(images[0]).std() > 0


def test_generate_rejects_bad_requests(model, vectors):
    with pytest.raises(FactoryError, match=r"unknown scheduler 'plms' \(choose from ddim, dpm\+\+, euler_a, lcm\)"):
        model.generate([PROMPT], vectors[:1], [0], scheduler="plms", **SMALL)
    with pytest.raises(FactoryError, match=r"identity vector 0 has shape \(31,\), the model needs \(32,\)"):
        model.generate([PROMPT], [np.zeros(31)], [0], **SMALL)
    with pytest.raises(FactoryError, match="placeholders"):
        model.generate(["a photo"], vectors[:1], [0], **SMALL)
    with pytest.raises(FactoryError, match="too long"):
        model.generate(["a " * 80 + IDENTITY], vectors[:1], [0], **SMALL)


def test_camera_codes(tmp_path, cache):
    (tmp_path / "codes.json").write_text(json.dumps({"cam3": "8miP"}))
    model = TextToImage.load(ModelRef(preset="tiny", camera_codes=str(tmp_path / "codes.json")), cache_dir=cache)
    assert model.camera_code("cam3") == "8miP" and model.camera_code("cam9") == "cam9"


def test_random_identity_vector():
    v = random_identity_vector(3, 16, 2.5)
    assert v.dtype == np.float32 and v.shape == (16,) and np.isclose(np.linalg.norm(v), 2.5)
    assert np.array_equal(v, random_identity_vector(3, 16, 2.5))
    assert not np.array_equal(v, random_identity_vector(4, 16, 2.5))


# LoRA


def test_lora_is_loaded_fused_and_changes_the_image(tmp_path, cache, model, vectors):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(preset_path("tiny", cache) / "unet")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    torch.manual_seed(1)
    unet.add_adapter(config)  # init_lora_weights=False: B is random, not zero, so the LoRA has an effect
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=config.to_dict()
    )
    ref = ModelRef(preset="tiny", lora=str(tmp_path / "pytorch_lora_weights.safetensors"))
    tuned = TextToImage.load(ref, cache_dir=cache)
    assert ref.fingerprint() != ModelRef(preset="tiny").fingerprint()

    latents, text = torch.randn(1, 4, 16, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        expected = unet(latents, 10, encoder_hidden_states=text).sample
        fused = tuned.pipe.unet(latents, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-4)  # alpha/r scaling kept

    base = pixels(model.generate([PROMPT], vectors[:1], [0], **SMALL))[0]
    assert not np.array_equal(base, pixels(tuned.generate([PROMPT], vectors[:1], [0], **SMALL))[0])


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_pipelines_load_in_the_dtype_asked_for(cache, dtype):
    """The dtype reaches diffusers under the keyword the installed release reads (not ignored into float32)."""
    import torch

    from factory.dlcr.inpainter import Inpainter

    expected = getattr(torch, dtype)
    pipe = TextToImage.load(ModelRef(preset="tiny"), cache_dir=cache, dtype=dtype).pipe
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {expected}
    inpainter = Inpainter.load(ModelRef(preset="tiny"), cache_dir=cache, dtype=dtype)
    assert inpainter.pipe.unet.dtype == expected
