"""The model replica: one ``GenerationPipeline``, fed one scene at a time in batches (``serve/app.py`` makes it a
Ray Serve deployment and batches its calls with ``@serve.batch``; this file knows no Ray).

The ingress splits a request of ``count`` scenes into ``count`` ``SceneJob``s (scene i seeded ``scene_seed(seed, i)``,
SPEC §3 / STYLE: per-scene seeds), so scenes of concurrent requests share model batches. A batch is split by
(sampler, steps), the only arguments ``GenerationPipeline.generate`` takes per call; each scene's bytes depend only
on its own conditions and seed (the pipeline's fixed micro-batches), never on its batch mates. The pipeline runs in
a worker thread so the replica keeps queueing the next batch meanwhile. A batch that raises is retried scene by
scene, so one failing scene fails only its own request and the replica stays up.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from dcgen.generate.conditions import SceneJob, SceneResult

log = logging.getLogger("dcgen.serve")


class SceneReplica:
    """What one replica does: load the pipeline, answer ``info``, generate a batch of ``SceneJob``s."""

    def __init__(self, vae: str, dit: str, device: str = "auto", use_ema: bool = True, micro_batch: int = 8):
        from dcgen.generate.pipeline import GenerationPipeline

        self.pipeline = GenerationPipeline.from_checkpoints(vae, dit, device=device, use_ema=use_ema,
                                                            micro_batch=micro_batch)
        self.checkpoints = dict(self.pipeline.checkpoint_ids)

    def info(self) -> dict:
        return self.pipeline.info()

    async def generate_batch(self, jobs: list[SceneJob]) -> list[SceneResult]:
        """One result per job, in order; a failing scene fails alone (the batch is retried scene by scene)."""
        results: list[SceneResult | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.sampler, job.steps), []).append(i)
        for (sampler, steps), idx in groups.items():
            try:
                occ = await self._run([jobs[i] for i in idx], sampler, steps)
                for k, i in enumerate(idx):
                    results[i] = SceneResult(occ[k], len(jobs), self.checkpoints)
            except Exception as e:  # noqa: BLE001 - isolate the failing scene below
                if len(idx) == 1:
                    results[idx[0]] = self._failure(e, len(jobs))
                    continue
                log.warning("batch of %d scenes failed (%s); retrying one by one", len(idx), e)
                for i in idx:
                    try:
                        occ = await self._run([jobs[i]], sampler, steps)
                        results[i] = SceneResult(occ[0], len(jobs), self.checkpoints)
                    except Exception as e1:  # noqa: BLE001
                        results[i] = self._failure(e1, len(jobs))
        return results

    async def _run(self, jobs: list[SceneJob], sampler: str, steps: int | None) -> np.ndarray:
        return await asyncio.to_thread(self.pipeline.generate, [j.request for j in jobs], [j.seed for j in jobs],
                                       sampler, steps)

    def _failure(self, e: Exception, batch_size: int) -> SceneResult:
        invalid = isinstance(e, ValueError)
        if not invalid:
            log.error("scene generation failed", exc_info=e)
        text = str(e).strip()
        return SceneResult(None, batch_size, self.checkpoints, error=text.splitlines()[0] if text else type(e).__name__,
                           invalid=invalid)
