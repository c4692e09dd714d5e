"""What one fine-tune optimizer step costs with many identity tokens.

    python -m benchmarks.finetune_step [--people 2000] [--steps 20]

A DiVE joint fine-tune of the `tiny` preset on the training half of a world Market-like
set of N people (one image per camera, all one camera as DiVE treats Market), so the
text encoder gains N / 2 identity rows. It times `--steps` optimizer steps after two warm-up steps and
counts what the optimizer holds: the parameters it updates and the numbers in its state
(AdamW keeps two per parameter).

`tiny`'s token table is small (about 1,800 x 32), so the full step says little about how
the token rows are trained. `--table` therefore also times that part alone at SD 1.5's
shape (49,408 + N rows x 768, a batch of 4 captions of 77 tokens): the embedding forward,
backward and AdamW step done as the fine-tune does it (peft's trainable tokens: only the N
rows are parameters) against training the whole table and copying the old rows back from
a CPU copy after each step, as the fine-tune did before. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from peft import TrainableTokensConfig, inject_adapter_in_model
from torch import nn

from factory.dive.finetune.run import _training
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainer import Trainer


def make_spec(people: int, out: Path) -> FinetuneSpec:
    return FinetuneSpec.model_validate({
        "run_id": "bench", "output": str(out), "seed": 0, "base": {"preset": "tiny"},
        "datasets": [{"dataset": f"world://market?identities={people}&seed=11&images_per_camera=1",
                      "single_camera": "cam7"}],
        "width": 32, "height": 64, "lora_rank": 4, "batch_size": 4, "steps": 1_000_000, "mixed_precision": "no",
    })


def optimizer_counts(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = sum(t.numel() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    return {"parameters": sum(p.numel() for p in params), "state_numbers": state}


def _timed(step, steps: int) -> float:
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def table_step_seconds(new_rows: int, steps: int, vocabulary: int = 49_408, width: int = 768) -> dict[str, float]:
    """Seconds per step of training `new_rows` token rows of an SD 1.5-sized table, both ways."""
    generator = torch.Generator().manual_seed(0)
    new = torch.arange(vocabulary, vocabulary + new_rows)
    ids = torch.cat([new[torch.randint(0, new_rows, (4, 8), generator=generator)],
                     torch.randint(0, vocabulary, (4, 69), generator=generator)], dim=1)
    target = torch.randn(4, 77, width, generator=generator)

    whole = nn.Embedding(vocabulary + new_rows, width)
    kept = whole.weight.detach().clone()  # the old rows' copy, on the CPU
    full_optimizer = torch.optim.AdamW(whole.parameters(), lr=1e-3)
    old_rows = torch.ones(vocabulary + new_rows, dtype=torch.bool)
    old_rows[new] = False

    def full_table() -> None:
        nn.functional.mse_loss(whole(ids), target).backward()
        full_optimizer.step()
        full_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            whole.weight[old_rows] = kept[old_rows]

    holder = nn.Module()
    holder.embed = nn.Embedding(vocabulary + new_rows, width)
    holder.embed.weight.requires_grad_(False)
    inject_adapter_in_model(TrainableTokensConfig(target_modules=["embed"], token_indices=new.tolist()), holder)
    rows_optimizer = torch.optim.AdamW([p for p in holder.parameters() if p.requires_grad], lr=1e-3)

    def trainable_tokens() -> None:
        nn.functional.mse_loss(holder.embed(ids), target).backward()
        rows_optimizer.step()
        rows_optimizer.zero_grad(set_to_none=True)

    return {"full_table": _timed(full_table, steps), "trainable_tokens": _timed(trainable_tokens, steps)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--table", action="store_true", help="also time the token rows' training at SD 1.5's shape")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as an actor runs, and steadier on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(args.people, Path(tmp) / "ft")
        trainset, codes, _ = _training(spec)
        trainer = Trainer(spec, trainset, codes, Path(tmp) / "ft")
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        seconds = (time.perf_counter() - start) / args.steps
    counts = optimizer_counts(trainer.optimizer)
    vocabulary, tokens = len(trainer.tokenizer), len(trainer.token_ids)
    print(f"{tokens} identity tokens (vocabulary {vocabulary}): {seconds * 1000:.1f} ms per step over "
          f"{args.steps} steps; the optimizer updates {counts['parameters']:,} numbers and keeps "
          f"{counts['state_numbers']:,} in its state")
    result = {"people": args.people, "identity_tokens": tokens, "vocabulary": vocabulary, "steps": args.steps,
              "seconds_per_step": round(seconds, 5), **counts}
    if args.table:
        table = table_step_seconds(tokens, args.steps)
        ratio = table["full_table"] / table["trainable_tokens"]
        print(f"SD 1.5-sized table, {tokens} new rows: {table['full_table'] * 1000:.1f} ms per step training the whole "
              f"table and restoring the old rows, {table['trainable_tokens'] * 1000:.1f} ms with trainable tokens "
              f"({ratio:.1f}x faster)")
        result["sd15_table_seconds_per_step"] = {k: round(v, 5) for k, v in table.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
