"""Batch k's VAE decode and image encoding while batch k+1 denoises: the actors' decode overlap.

A diffusion batch has two halves: the denoising loop (the UNet, most of the work) and its
finish (the VAE decode, pasting, JPEG/PNG encoding). Run one after the other, the UNet
waits for every finish: on a GPU the device idles while the CPU encodes images. With
overlap the caller denoises the next batch while one worker thread finishes the last.
On CUDA the worker decodes on a stream of its own, ordered after the denoising that made
its latents by an event, so the UNet and the VAE kernels can share the device. Each image
depends only on its own latents, so the bytes are the same with overlap on or off (the
tests compare them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

import torch

Batch = TypeVar("Batch")
Made = TypeVar("Made")


class DecodeOverlap:
    """Runs `denoise` over the batches in the caller's thread and `finish` on one worker thread, in order."""

    def __init__(self, enabled: bool) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._stream = None
        if enabled:
            # The worker computes with as many CPU threads as the actor was given, as the caller does.
            self._pool = ThreadPoolExecutor(1, "decode", initializer=torch.set_num_threads,
                                            initargs=(torch.get_num_threads(),))
            self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    def run(self, batches: Iterable[Batch], denoise: Callable[[Batch], torch.Tensor],
            finish: Callable[[Batch, torch.Tensor], list[Made]]) -> list[Made]:
        """Every batch's finished items, in batch order; a failure leaves nothing running behind it."""
        if self._pool is None:
            return [made for batch in batches for made in finish(batch, denoise(batch))]
        futures: list[Future] = []
        try:
            for batch in batches:
                latents = denoise(batch)
                futures.append(self._pool.submit(self._finish, finish, batch, latents, self._denoised()))
        except BaseException:
            wait(futures)  # a failed task's finishes end before the next task starts
            raise
        return [made for future in futures for made in future.result()]

    def _denoised(self):
        """A CUDA event after the caller's queued denoising work, or None on a CPU (the work is done already)."""
        if self._stream is None:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def _finish(self, finish, batch, latents: torch.Tensor, denoised) -> list:
        if self._stream is None:
            return finish(batch, latents)
        self._stream.wait_event(denoised)
        with torch.cuda.stream(self._stream):
            return finish(batch, latents)  # ends in a device-to-host copy: the stream's work is done on return
