"""The reference ReID models (AGW, CAJ, CAL), their training and evaluation, and identity scoring.

The recipes are in docs/METHODS.md §6. Modules are imported where used: `factory.reid.spec`
(what `train-reid` validates) must not pay for torch.
"""
