"""What one fine-tune optimizer step costs with many identity tokens.

    python -m benchmarks.finetune_step [--identities 1000] [--steps 20]

A DiVE joint fine-tune of the `tiny` preset on a world Market-like set of N people
(one image per camera, all one camera as DiVE treats Market), so the text encoder
gains N identity rows. It times `--steps` optimizer steps after two warm-up steps and
counts what the optimizer holds: the parameters it updates and the numbers in its state
(AdamW keeps two per parameter). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from factory.dive.finetune.run import _training
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainer import Trainer


def make_spec(identities: int, out: Path) -> FinetuneSpec:
    return FinetuneSpec.model_validate({
        "run_id": "bench", "output": str(out), "seed": 0, "base": {"preset": "tiny"},
        "datasets": [{"dataset": f"world://market?identities={identities}&seed=11&images_per_camera=1",
                      "single_camera": "cam7"}],
        "width": 32, "height": 64, "lora_rank": 4, "batch_size": 4, "steps": 1_000_000, "mixed_precision": "no",
    })


def optimizer_counts(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = sum(t.numel() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    return {"parameters": sum(p.numel() for p in params), "state_numbers": state}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as an actor runs, and steadier on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(args.identities, Path(tmp) / "ft")
        trainset, codes, _ = _training(spec)
        trainer = Trainer(spec, trainset, codes, Path(tmp) / "ft")
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        seconds = (time.perf_counter() - start) / args.steps
    counts = optimizer_counts(trainer.optimizer)
    vocabulary = len(trainer.tokenizer)
    print(f"{args.identities} identity tokens (vocabulary {vocabulary}): {seconds * 1000:.1f} ms per step over "
          f"{args.steps} steps; the optimizer updates {counts['parameters']:,} numbers and keeps "
          f"{counts['state_numbers']:,} in its state")
    result = {"identities": args.identities, "vocabulary": vocabulary, "steps": args.steps,
              "seconds_per_step": round(seconds, 5), **counts}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
