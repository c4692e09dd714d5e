"""DiVE: visible–infrared expansion by paired generation (docs/METHODS.md §2).

`spec` (the job), `identities` (whose images, with their vectors or words), `tasks`
(shards of whole identities, one task per modality and camera), `actor` (a text-to-image
pipeline per modality), `writer` (a shard of RGB–IR pairs), `method` (the engine's
plug-in for `factory generate`), and `finetune/` (the identity tokens, camera codes and
LoRA that make a base model DiVE's).
"""
