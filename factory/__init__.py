"""The producer side of the ReID synthetic data factory.

Kept import-light on purpose: `manifests` (which training jobs import) uses
`factory.storage` and `factory.errors`, so nothing heavy (torch, diffusers, ray)
may be imported at package level.
"""

__version__ = "0.1.0"
