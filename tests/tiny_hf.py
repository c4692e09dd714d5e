"""Tiny random transformers models, built from code and saved as local folders (no download).

They run the real loading and inference code of the DLCR stages: a SegFormer parser with
LIP's label names, a LLaVA-style image-text-to-text model and a Llama text model, sharing
a word-level tokenizer built with `tokenizers`. Their outputs are random, so tests use
them for plumbing (shapes, calls, caching) and the procedural world for semantics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
)

from factory.world import LIP

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = (
    "USER: ASSISTANT: 1. 2. 3. here are the clothing items a blue red black white shirt pants shoes jeans skirt".split()
)
# One user turn; the image placeholder is expanded by the processor into patch tokens.
CHAT = (
    "{% for m in messages %}USER: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %} ASSISTANT:{% endfor %}"
)


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _text_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip


def build_segformer(out: Path, label_names: list[str] | None = None) -> Path:
    """A SegFormer whose labels are LIP's (or `label_names`)."""
    names = label_names or sorted(LIP, key=LIP.get)
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(out)
    SegformerImageProcessor(size={"height": 64, "width": 32}).save_pretrained(out)
    return out


def build_vlm(out: Path) -> Path:
    """A LLaVA-style model: a 1-layer CLIP vision tower (32x32, 16 patches) and a 1-layer Llama."""
    tokenizer = _tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT,
    ).save_pretrained(out)
    return out


def build_llm(out: Path) -> Path:
    tokenizer = _tokenizer()
    tokenizer.chat_template = CHAT
    torch.manual_seed(0)
    LlamaForCausalLM(_text_config(len(tokenizer))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
