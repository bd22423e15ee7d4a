"""The model replica's own batching (issue 25), without Ray: a lone scene starts at once, a burst shares one batch,
a batch waits only for as many scenes as the last one had, batches stay within ``max_batch_size``, a cancelled
scene is dropped, a failing scene fails alone; and bad batching numbers are refused with their name."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from dcgen.generate.conditions import SceneJob, SceneRequest
from dcgen.serve.model import SceneReplica

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2
WAIT_S = 5.0  # long, so that a scene which waited for batch mates is plain to see against one that did not


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("replica-ckpt"))


def _replica(ckpts, **kw) -> SceneReplica:
    return SceneReplica(*ckpts, device="cpu", micro_batch=8, **{"max_batch_size": 8, "batch_wait_s": WAIT_S, **kw})


def _job(seed: int, **conditions) -> SceneJob:
    return SceneJob(SceneRequest(**conditions), seed, "ddim", STEPS)


def test_batches_form_from_the_queue_without_waiting_on_a_lone_scene(ckpts):
    replica = _replica(ckpts)

    async def scenario():
        t0 = time.perf_counter()
        lone = await replica.generate(_job(1, command=1))
        lone_s = time.perf_counter() - t0
        burst = await asyncio.gather(*(replica.generate(_job(10 + i, command=i % 4)) for i in range(4)))

        async def late(i: int):  # the burst's clients come back one by one, 50 ms apart
            await asyncio.sleep(0.05 * i)
            return await replica.generate(_job(20 + i, command=2))

        t0 = time.perf_counter()
        staggered = await asyncio.gather(*(late(i) for i in range(4)))
        staggered_s = time.perf_counter() - t0
        many = await asyncio.gather(*(replica.generate(_job(30 + i)) for i in range(16)))
        return lone, lone_s, burst, staggered, staggered_s, many

    lone, lone_s, burst, staggered, staggered_s, many = asyncio.run(scenario())
    assert lone.error is None and lone.occupancy_TXYZ.shape == (4, 32, 32, 4)
    assert lone.batch_size == 1 and lone_s < WAIT_S / 2, f"a lone scene took {lone_s:.2f} s"
    assert [r.batch_size for r in burst] == [4] * 4, "scenes queued together go in one batch"
    assert [r.batch_size for r in staggered] == [4] * 4, "after a batch of 4 the next waits for 4"
    assert staggered_s < WAIT_S, f"4 scenes over 150 ms took {staggered_s:.2f} s: the batch did not start when full"
    assert [r.batch_size for r in many] == [8] * 16, "at most max_batch_size scenes per batch"
    assert all(r.error is None for r in burst + staggered + many)
    assert not np.array_equal(many[0].occupancy_TXYZ, many[1].occupancy_TXYZ), "each scene has its own seed"


def test_a_cancelled_scene_leaves_the_batch(ckpts):
    replica = _replica(ckpts)

    async def scenario():
        gone = asyncio.ensure_future(replica.generate(_job(1)))
        await asyncio.sleep(0)  # queued, then its client gives up before the replica takes it
        gone.cancel()
        kept = await replica.generate(_job(2))
        return gone, kept

    gone, kept = asyncio.run(scenario())
    assert gone.cancelled() and kept.error is None and kept.batch_size == 1


def test_a_failing_scene_fails_alone(ckpts):
    replica = _replica(ckpts, batch_wait_s=0.0)
    src = np.zeros((4, 32, 32, 4), np.uint8)

    async def scenario():
        jobs = [_job(1, command=1), _job(2, source=src, outpaint_shift=3), _job(3, command=2)]
        return await asyncio.gather(*(replica.generate(j) for j in jobs))

    good, bad, good2 = asyncio.run(scenario())
    assert good.error is None and good2.error is None and good.batch_size == 3
    assert bad.invalid and bad.occupancy_TXYZ is None and "outpaint_shift" in bad.error


@pytest.fixture(scope="module")
def reference_ckpts(tmp_path_factory):
    """Debug networks whose VAE works in the reference frame (the small preset's): it has a trajectory slot."""
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("replica-ref-ckpt"), frame="reference")


def test_another_degree_is_a_copy_of_the_pipeline_and_the_original_keeps_its_own(reference_ckpts, ckpts):
    from dcgen.generate.pipeline import GenerationPipeline

    pipe = GenerationPipeline.from_checkpoints(*reference_ckpts, device="cpu")
    assert pipe.trajectory_degree == 3
    assert pipe.with_trajectory_degree(None) is pipe and pipe.with_trajectory_degree(3) is pipe
    linear = pipe.with_trajectory_degree(1)
    assert linear is not pipe and linear.trajectory_degree == 1
    assert linear.vae is pipe.vae and linear.dit is pipe.dit, "the copy shares the networks"
    assert pipe.trajectory_degree == 3 and pipe.info()["sampler_defaults"]["trajectory_degree"] == 3
    assert linear.info()["sampler_defaults"]["trajectory_degree"] == 1
    # an ego-frame VAE has no trajectory slot: no degree applies, and none is reported
    ego = GenerationPipeline.from_checkpoints(*ckpts, device="cpu")
    assert ego.trajectory_degree is None and ego.with_trajectory_degree(1) is ego
    assert ego.info()["sampler_defaults"]["trajectory_degree"] is None


def test_each_scene_is_decoded_with_its_own_trajectory_degree(reference_ckpts):
    from dataclasses import replace

    from dcgen.generate.pipeline import GenerationPipeline

    replica = _replica(reference_ckpts, batch_wait_s=0.0)
    jobs = [SceneJob(SceneRequest(command=1), 1, "ddim", STEPS, trajectory_degree=1),
            SceneJob(SceneRequest(command=1), 1, "ddim", STEPS),  # the same scene at the replica's default degree
            SceneJob(SceneRequest(command=2), 2, "ddim", STEPS, trajectory_degree=1),
            SceneJob(SceneRequest(command=1), 3, "ddim", STEPS, trajectory_degree=-1)]
    linear, default, bad = [0, 2], [1], 3
    results = asyncio.run(replica.generate_batch(jobs))
    # each group is one pipeline call of its scenes (the same bucket shapes as here)
    pipe = GenerationPipeline.from_checkpoints(*reference_ckpts, device="cpu", micro_batch=8, buckets=True)
    want_default = pipe.generate([jobs[i].request for i in default], [jobs[i].seed for i in default], "ddim", STEPS)
    pipe.defaults = replace(pipe.defaults, trajectory_degree=1)
    want_linear = pipe.generate([jobs[i].request for i in linear], [jobs[i].seed for i in linear], "ddim", STEPS)
    for i, want in zip(linear + default, [*want_linear, *want_default]):
        assert results[i].error is None and np.array_equal(results[i].occupancy_TXYZ, want), i
    assert [results[i].trajectory_degree for i in linear + default] == [1, 1, 3]
    assert (want_linear[0] != want_default[0]).any(), "the same scene at another degree moves"
    assert results[bad].invalid and results[bad].occupancy_TXYZ is None
    assert results[bad].error == "trajectory_degree -1: expected 0 (off) or a polynomial degree >= 1"
    assert replica.info()["sampler_defaults"]["trajectory_degree"] == 3  # a request's degree is its own


@pytest.mark.parametrize("kw, message", [
    ({"max_batch_size": 0}, "max_batch_size: 0; expected an integer >= 1"),
    ({"batch_wait_s": -1.0}, "batch_wait_s: -1.0; expected seconds in 0..10"),
    ({"batch_wait_s": "soon"}, "batch_wait_s: 'soon'; expected seconds in 0..10"),
])
def test_bad_batching_numbers_are_refused(ckpts, kw, message):
    with pytest.raises(ValueError, match=message):
        _replica(ckpts, **kw)
