"""Outfits and their prompts (docs/METHODS.md §3.2): the clothes a source image is dressed in.

An outfit is a dataset's clothes id (PRCC "{pid}_AB"/"{pid}_C", LTCC "{pid}_{cloth}"; a
dataset without clothes ids has one outfit per identity, "{pid}") with its owner and a
list of clothing items. Its prompt is DLCR's: items lower-cased, commas removed, items
of two characters or fewer dropped, joined with spaces (no template, no negative prompt).

Items come from one of three places:

- the VLM and LLM (`OutfitDescriber`): per image, the VLM answers DLCR's question; the
  answers of an outfit are concatenated, and the LLM extracts items from their first
  200 words. Every description is cached by outfit id (with the describer's
  fingerprint) in a Parquet wardrobe, so a rerun never asks a model twice;
- the procedural world's attribute descriptions ("Navy shirt| Black denim skirt| ...").
  Their prompt is in the world models' own language instead (they know no other): the
  outfit's attribute words with every slot that is not clothing `any`
  (`factory.world.captions.outfit_prompt`);
- a user's wardrobe file (.parquet as written here, or .jsonl).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from factory.datasets.records import Record
from factory.dlcr.spec import DescriberSpec
from factory.engine.contract import Actor
from factory.errors import FactoryError, NotFound
from factory.seeds import derive_seed
from factory.world.annotations import read_annotations
from factory.world.captions import outfit_prompt
from manifests.storage import storage_for

log = logging.getLogger(__name__)

# A numbered-list marker ("1. ", "12. ") at the start of the text or after whitespace.
_MARKER = re.compile(r"(?:^|(?<=\s))\d+\.\s+")
# Chunks of outfits described between cache saves: a killed driver loses at most one.
DESCRIBE_CHUNK = 32

SCHEMA = pa.schema(
    [
        pa.field("outfit", pa.string(), nullable=False),
        pa.field("identity", pa.int64(), nullable=False),
        pa.field("items", pa.list_(pa.string()), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string())),  # the VLM's answers, for a model-described outfit
        pa.field("summary", pa.string()),  # the LLM's raw output
        pa.field("describer", pa.string()),  # fingerprint of what described it: cached rows must match
    ]
)


def parse_items(text: str) -> list[str]:
    """DLCR's parse of the LLM's answer: split on numbered-list markers, drop the preamble."""
    return [" ".join(part.split()) for part in _MARKER.split(text)[1:] if part.strip()]


def prompt_from_items(items: Iterable[str]) -> str:
    words = (" ".join(item.lower().replace(",", "").split()) for item in items)
    return " ".join(w for w in words if len(w) > 2)


def outfit_id(record: Record) -> str:
    return record.clothes if record.clothes is not None else str(record.identity)


@dataclass(frozen=True)
class Outfit:
    outfit: str
    identity: int  # whose outfit it is: a subject is never dressed in their own
    items: tuple[str, ...]
    prompt: str
    answers: tuple[str, ...] = ()
    summary: str | None = None
    describer: str | None = None


@dataclass(frozen=True)
class OutfitImages:
    """An outfit's images, in path order: what the describer looks at."""

    outfit: str
    identity: int
    images: tuple[tuple[str, str], ...]  # (path relative to the dataset root, absolute path)


def outfit_groups(records: list[Record], root: Path) -> list[OutfitImages]:
    """The outfits of `records`, sorted by id, each with its images sorted by path."""
    groups: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    for record in sorted(records, key=lambda r: str(r.path)):
        identity, images = groups.setdefault(outfit_id(record), (record.identity, []))
        if identity != record.identity:
            raise FactoryError(f"outfit {outfit_id(record)!r} is worn by identities {identity} and {record.identity}")
        images.append((record.path.relative_to(root).as_posix(), str(record.path)))
    return [OutfitImages(o, identity, tuple(images)) for o, (identity, images) in sorted(groups.items())]


@dataclass
class Wardrobe:
    outfits: dict[str, Outfit] = field(default_factory=dict)

    def table(self) -> pa.Table:
        rows = [
            {**o.__dict__, "items": list(o.items), "answers": list(o.answers)}
            for o in sorted(self.outfits.values(), key=lambda o: o.outfit)
        ]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def save(self, uri: str) -> None:
        buf = io.BytesIO()
        pq.write_table(self.table(), buf)
        storage_for(uri).put_bytes(buf.getvalue(), uri)

    @classmethod
    def load(cls, uri: str) -> Wardrobe | None:
        """The wardrobe stored at `uri`, or None if there is none yet."""
        try:
            data = storage_for(uri).get_bytes(uri)
        except NotFound:
            return None
        return cls.from_rows(_read_parquet(data, uri), uri)

    @classmethod
    def from_rows(cls, rows: list[dict], where: str) -> Wardrobe:
        outfits: dict[str, Outfit] = {}
        for n, raw in enumerate(rows, 1):
            try:
                row = _Row.model_validate(raw)
            except ValidationError as e:
                first = e.errors()[0]
                raise FactoryError(f"{where}: outfit {n}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
            if row.outfit in outfits:
                raise FactoryError(f"{where}: outfit {row.outfit!r} appears twice")
            prompt = row.prompt if row.prompt is not None else prompt_from_items(row.items)
            outfits[row.outfit] = Outfit(
                row.outfit, row.identity, tuple(row.items), prompt, tuple(row.answers or ()), row.summary, row.describer
            )
        return cls(outfits)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outfit: str
    identity: int
    items: list[str]
    prompt: str | None = None
    answers: list[str] | None = None
    summary: str | None = None
    describer: str | None = None


def _read_parquet(data: bytes, where: str) -> list[dict]:
    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except pa.ArrowException as e:
        raise FactoryError(f"{where}: not a Parquet wardrobe ({e})") from None


def file_wardrobe(uri: str) -> Wardrobe:
    """A user's wardrobe: .parquet (columns as `SCHEMA`; prompt optional) or .jsonl, one outfit a line."""
    try:
        data = storage_for(uri).get_bytes(uri)
    except NotFound:
        raise FactoryError(f"wardrobe.path: no wardrobe file at {uri}") from None
    if uri.endswith(".parquet"):
        return Wardrobe.from_rows(_read_parquet(data, uri), uri)
    if uri.endswith(".jsonl"):
        try:
            rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FactoryError(f"{uri}: not JSON lines ({e})") from None
        return Wardrobe.from_rows(rows, uri)
    raise FactoryError(f"wardrobe.path {uri}: a wardrobe is a .parquet or .jsonl file")


def world_wardrobe(root: Path, groups: list[OutfitImages]) -> Wardrobe:
    """Outfits described by the procedural world's attributes: items as DLCR's ("Gray shirt| Blue jeans|
    Black shoes"), the prompt in the world models' words ("a rgb photo of a any ... gray plain none cotton
    shirt blue denim pants black any any person")."""
    rows = read_annotations(root, "wardrobe.source world")
    outfits = {}
    for group in groups:
        relative = group.images[0][0]
        if relative not in rows:
            raise FactoryError(f"wardrobe.source world: {relative} has no description in {root}/world/annotations.jsonl")
        items = tuple(part.strip() for part in rows[relative]["description"].split("|"))
        prompt = outfit_prompt(rows[relative]["words"].split())
        outfits[group.outfit] = Outfit(group.outfit, group.identity, items, prompt, describer="world")
    return Wardrobe(outfits)


# describe(outfits, keep): describe the outfits, calling keep(described) as each chunk is done.
Describe = Callable[[list[OutfitImages], Callable[[list[Outfit]], None]], None]


def cached_wardrobe(groups: list[OutfitImages], cache_uri: str, fingerprint: str, describe: Describe) -> Wardrobe:
    """Outfits from the cache at `cache_uri` where it has them (same describer), described otherwise.

    The cache is saved whenever a chunk of new descriptions comes in, so a killed driver
    keeps what was already described; it keeps rows of outfits this run does not use.
    """
    cache = Wardrobe.load(cache_uri) or Wardrobe()
    missing = [g for g in groups if (hit := cache.outfits.get(g.outfit)) is None or hit.describer != fingerprint]
    saving = threading.Lock()  # chunks may come in from the engine's writer threads

    def keep(described: list[Outfit]) -> None:
        with saving:
            cache.outfits.update((outfit.outfit, outfit) for outfit in described)
            cache.save(cache_uri)

    if missing:
        describe(missing, keep)
    return Wardrobe({g.outfit: cache.outfits[g.outfit] for g in groups})


def describer_fingerprint(spec: DescriberSpec, seed: int) -> str:
    """Changes with the models' weights, the prompts, the sampling settings or the seed."""
    from factory.models.reference import folder_digest, resolve_model_path

    parts = {
        "vlm": folder_digest(resolve_model_path(spec.vlm)),
        "llm": folder_digest(resolve_model_path(spec.llm)),
        "settings": spec.model_dump(mode="json", exclude={"vlm", "llm"}),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _sampling(temperature: float, **more: float) -> dict:
    return dict(do_sample=True, temperature=temperature, **more) if temperature > 0 else dict(do_sample=False)


@dataclass(frozen=True)
class DescriberConfig:
    spec: DescriberSpec
    seed: int
    fingerprint: str
    threads: int = 1


@dataclass(frozen=True)
class DescribeTask:
    """A chunk of outfits to describe: the unit the describer actor takes, with a timeout and retries."""

    task_id: str
    shard: int  # the chunk's number: each chunk is kept (saved to the cache) as it completes
    outfits: tuple[OutfitImages, ...]
    group: str = "describe"

    @property
    def size(self) -> int:
        return len(self.outfits)


@dataclass(frozen=True)
class DescribeResult:
    task_id: str
    shard: int
    outfits: tuple[Outfit, ...]

    @property
    def made(self) -> int:
        return len(self.outfits)


def describe_chunks(outfits: list[OutfitImages]) -> list[DescribeTask]:
    """`outfits` in chunks of DESCRIBE_CHUNK, one task each."""
    return [
        DescribeTask(f"describe-{n:06d}", n, tuple(outfits[start : start + DESCRIBE_CHUNK]))
        for n, start in enumerate(range(0, len(outfits), DESCRIBE_CHUNK))
    ]


class OutfitDescriber(Actor[DescriberConfig, DescribeTask, DescribeResult]):
    """The VLM and LLM stages as an engine actor; `calls` counts model generations."""

    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        self.spec = config.spec
        self.seed = config.seed
        self.fingerprint = config.fingerprint
        self.calls = 0
        self.vlm = None

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        from factory.models.device import actor_device, torch_dtype
        from factory.models.reference import resolve_model_path

        self.device, dtype_name = actor_device(self.config.threads, "auto")
        dtype = torch_dtype(dtype_name)
        vlm, llm = resolve_model_path(self.spec.vlm), resolve_model_path(self.spec.llm)
        self.processor = AutoProcessor.from_pretrained(vlm, local_files_only=True)
        if not getattr(self.processor, "chat_template", None):
            raise FactoryError(f"describer.vlm {self.spec.vlm}: its processor has no chat template to ask with")
        self.vlm = AutoModelForImageTextToText.from_pretrained(
            vlm, local_files_only=True, use_safetensors=True, dtype=dtype
        ).to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(llm, local_files_only=True)
        self.llm = AutoModelForCausalLM.from_pretrained(
            llm, local_files_only=True, use_safetensors=True, dtype=dtype
        ).to(self.device)

    def answer(self, image: Image.Image, seed: int) -> str:
        """The VLM's answer to DLCR's question about one image."""
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.spec.question}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        inputs.pop("token_type_ids", None)  # some processors add it; transformers 4.x generate() refuses it
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.vlm.generate(
                **inputs,
                max_new_tokens=self.spec.vlm_max_new_tokens,
                num_beams=1,
                **_sampling(self.spec.vlm_temperature),
            )
        self.calls += 1
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def summarise(self, text: str, seed: int) -> str:
        """The LLM's extraction of clothing items from the first `words` words of `text`."""
        import torch

        instruction = self.spec.instruction.replace("{text}", " ".join(text.split()[: self.spec.words]))
        if self.tokenizer.chat_template:
            inputs = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        else:  # a base model: the instruction as plain text
            inputs = self.tokenizer(instruction, return_tensors="pt")
        inputs = inputs.to(self.device)
        inputs.pop("token_type_ids", None)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.llm.generate(
                **inputs,
                max_new_tokens=self.spec.llm_max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **_sampling(self.spec.llm_temperature, top_p=self.spec.llm_top_p),
            )
        self.calls += 1
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def process(self, task: DescribeTask) -> DescribeResult:
        return DescribeResult(task.task_id, task.shard, tuple(self.describe(list(task.outfits))))

    def describe(self, groups: list[OutfitImages]) -> list[Outfit]:
        self.ready()
        outfits = []
        for group in groups:
            images = group.images[: self.spec.images_per_outfit]
            answers = []
            for relative, path in images:
                try:
                    with Image.open(path) as image:
                        picture = image.convert("RGB")
                except (OSError, SyntaxError) as e:  # a corrupt image is skipped (and recorded) at inpainting
                    log.warning("describer: cannot read %s (%s); not asked about", relative, e)
                    continue
                answers.append(self.answer(picture, derive_seed(self.seed, "vlm", relative)))
            summary = self.summarise("\n".join(answers), derive_seed(self.seed, "llm", group.outfit)) if answers else ""
            items = tuple(parse_items(summary))
            outfits.append(
                Outfit(
                    group.outfit,
                    group.identity,
                    items,
                    prompt_from_items(items),
                    tuple(answers),
                    summary,
                    self.fingerprint,
                )
            )
        return outfits
