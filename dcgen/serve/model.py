"""The model replica: one ``GenerationPipeline`` behind a queue of scenes that it runs in batches (``serve/app.py``
makes it a Ray Serve deployment; this file knows no Ray).

The ingress splits a request of ``count`` scenes into ``count`` ``SceneJob``s (scene i seeded ``scene_seed(seed, i)``,
SPEC §3 / STYLE: per-scene seeds), so scenes of concurrent requests share model batches. The batching is
work-conserving, like Triton's dynamic batcher without a queue delay: as soon as the replica is free it starts a
batch of every queued scene, up to ``max_batch_size``, and waits (at most ``batch_wait_s``) only for as many scenes as
its last batch had, because the clients whose scenes just came back send their next ones within milliseconds.
So a lone client never waits for batch mates (Ray's ``@serve.batch`` holds each batch open for its whole timeout,
which a lone request paid on top of its scene), and 32 clients in lock step keep getting batches of 32. The
pipeline pads a batch only to its bucket (the next power of two), so a lone scene costs one row of network work.

A batch is split by (sampler, steps, ego-motion prior degree): the first two are what ``GenerationPipeline.generate``
takes per call, the degree is the pipeline's ``SamplerDefaults.trajectory_degree``, so a group asking for another degree
runs on ``GenerationPipeline.with_trajectory_degree``'s shallow copy (networks shared, its own defaults), and the
replica's own defaults, which ``info`` reports, never change. A scene's bytes depend only on its own conditions, seed
and degree (up to the float rounding of kernels at another batch shape, see ``dcgen.generate.pipeline``), never on its
batch mates' contents. The pipeline runs in a worker thread so the replica keeps queueing meanwhile. A batch that raises
is retried scene by scene, so one failing scene fails only its own request and the replica stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import numpy as np

from dcgen.generate.conditions import SceneJob, SceneResult

log = logging.getLogger("dcgen.serve")


class SceneReplica:
    """What one replica does: load the pipeline, answer ``info``, generate ``SceneJob``s in batches."""

    def __init__(self, vae: str, dit: str, device: str = "auto", use_ema: bool = True, micro_batch: int = 8,
                 max_batch_size: int = 8, batch_wait_s: float = 0.05):
        from dcgen.generate.pipeline import GenerationPipeline

        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size: {max_batch_size!r}; expected an integer >= 1")
        if isinstance(batch_wait_s, bool) or not isinstance(batch_wait_s, (int, float)) or not 0 <= batch_wait_s <= 10:
            raise ValueError(f"batch_wait_s: {batch_wait_s!r}; expected seconds in 0..10")
        self.pipeline = GenerationPipeline.from_checkpoints(vae, dit, device=device, use_ema=use_ema,
                                                            micro_batch=micro_batch, buckets=True)
        self.checkpoints = dict(self.pipeline.checkpoint_ids)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = float(batch_wait_s)
        self._queue: deque[tuple[SceneJob, asyncio.Future]] = deque()
        self._arrived: asyncio.Event | None = None  # made on the replica's event loop, with the worker
        self._worker: asyncio.Task | None = None
        self._last_batch = 1

    def info(self) -> dict:
        return self.pipeline.info()

    async def generate(self, job: SceneJob) -> SceneResult:
        """One scene's result, made in a batch with whatever else is queued."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run_batches())
        future = loop.create_future()
        self._queue.append((job, future))
        self._arrived.set()
        return await future

    async def _run_batches(self) -> None:
        while True:
            await self._fill()
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                job, future = self._queue.popleft()
                if not future.done():  # done = cancelled: its client gave up
                    batch.append((job, future))
            if not batch:
                continue
            self._last_batch = len(batch)
            try:
                results = await self.generate_batch([job for job, _ in batch])
            except Exception as e:  # generate_batch isolates scenes; this is a bug: keep serving
                log.exception("batch of %d scenes failed outside the pipeline", len(batch))
                results = [self._failure(e, len(batch))] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def _fill(self) -> None:
        """Return once a scene is queued and either as many as the last batch had are, or ``batch_wait_s`` passed."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while len(self._queue) < min(self._last_batch, self.max_batch_size):
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def generate_batch(self, jobs: list[SceneJob]) -> list[SceneResult]:
        """One result per job, in order; a failing scene fails alone (the batch is retried scene by scene)."""
        results: list[SceneResult | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.sampler, job.steps, job.trajectory_degree), []).append(i)
        for (sampler, steps, degree), idx in groups.items():
            try:
                pipeline = self._pipeline_for(degree)
                occ = await self._run(pipeline, [jobs[i] for i in idx], sampler, steps)
                for k, i in enumerate(idx):
                    results[i] = self._result(occ[k], len(jobs), pipeline)
            except Exception as e:  # noqa: BLE001 - isolate the failing scene below
                if len(idx) == 1:
                    results[idx[0]] = self._failure(e, len(jobs))
                    continue
                log.warning("batch of %d scenes failed (%s); retrying one by one", len(idx), e)
                for i in idx:
                    try:
                        pipeline = self._pipeline_for(degree)
                        occ = await self._run(pipeline, [jobs[i]], sampler, steps)
                        results[i] = self._result(occ[0], len(jobs), pipeline)
                    except Exception as e1:  # noqa: BLE001
                        results[i] = self._failure(e1, len(jobs))
        return results

    def _pipeline_for(self, degree: int | None):
        """The pipeline with the ego-motion prior ``degree`` (None: the replica's default), never the replica's own
        pipeline changed: its defaults are what info() reports, read while batches run."""
        from dcgen.generate.job import check_trajectory_degree

        if degree is not None:
            degree = check_trajectory_degree(degree, "trajectory_degree")
        return self.pipeline.with_trajectory_degree(degree)

    def _result(self, occ_TXYZ: np.ndarray, batch_size: int, pipeline) -> SceneResult:
        return SceneResult(occ_TXYZ, batch_size, self.checkpoints, trajectory_degree=pipeline.trajectory_degree)

    @staticmethod
    async def _run(pipeline, jobs: list[SceneJob], sampler: str, steps: int | None) -> np.ndarray:
        return await asyncio.to_thread(pipeline.generate, [j.request for j in jobs], [j.seed for j in jobs],
                                       sampler, steps)

    def _failure(self, e: Exception, batch_size: int) -> SceneResult:
        invalid = isinstance(e, ValueError)
        if not invalid:
            log.error("scene generation failed", exc_info=e)
        text = str(e).strip()
        return SceneResult(None, batch_size, self.checkpoints, error=text.splitlines()[0] if text else type(e).__name__,
                           invalid=invalid)
