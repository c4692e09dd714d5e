"""Inputs to DiVE fine-tuning: the training set, captions, image tensors and new identities.

Fine-tuning itself (textual inversion + camera codes + UNet LoRA, docs/METHODS.md §2.2)
consumes these; they are kept apart so that every data decision (which images, which
identity numbers, which camera codes, which caption) is testable without a GPU.
"""
