"""Windows built ahead by worker processes: WindowSampler.next_step() without the wait.

A sample is a pure function of (seed, global index) (training/learn/data.py), so workers can build the
windows of the next steps in any order and the batches come out exactly as WindowSampler.next_step()
makes them. That matters on a GPU, where one step of a few hundred windows trains in less time than one
Python process needs to crop, humanize and phase-shift them; on 2 CPU cores the model step is ~100x the
data work (training/learn/bench_train.py prints both), so train() uses no workers there.

    with Prefetcher(sampler, workers=8) as data:
        batches = data.next_step()        # == sampler.next_step()

Workers are forked (the pieces are shared copy-on-write, not pickled) and never touch torch; forking
after CUDA is initialised is safe for such workers (torch's DataLoader does the same).
"""

from __future__ import annotations

import collections
import multiprocessing as mp

from typemoe.training.learn.data import Batch, Sample, WindowSampler

_SAMPLER: WindowSampler | None = None  # the forked workers' sampler (set before the pool starts)


def _sample(g: int) -> Sample:
    assert _SAMPLER is not None, "prefetch worker started without a sampler"
    return _SAMPLER.sample(g)


class Prefetcher:
    """sampler.next_step() with the samples of the next `depth` steps built by `workers` processes."""

    def __init__(self, sampler: WindowSampler, workers: int, depth: int = 3):
        global _SAMPLER
        if workers < 1 or depth < 1:
            raise ValueError(f"need workers >= 1 and depth >= 1, got {workers}, {depth}")
        self.sampler, self.depth = sampler, depth
        _SAMPLER = sampler
        self.pool = mp.get_context("fork").Pool(workers)
        self.pending: collections.deque = collections.deque()  # (step, AsyncResult of list[Sample])

    def next_step(self) -> list[Batch]:
        step = self.sampler.state.step
        while len(self.pending) < self.depth:
            k = step + len(self.pending)
            idx = self.sampler.indices(k)
            chunk = max(1, len(idx) // (4 * self.pool._processes))
            self.pending.append((k, self.pool.map_async(_sample, idx, chunksize=chunk)))
        k, result = self.pending.popleft()
        assert k == step, f"prefetched step {k}, sampler at {step} (state changed under the prefetcher?)"
        batches = self.sampler.batches(result.get())
        self.sampler.state.step += 1
        return batches

    def close(self) -> None:
        """Let the queued steps finish, then stop the workers. Not Pool.terminate(): with tasks still being
        fed, its task-handler thread can be blocked on the full task pipe while holding the pipe's lock, and
        terminate() then waits on that thread forever (seen in the suite). At most `depth` steps are queued."""
        for _, result in self.pending:
            result.wait()
        self.pending.clear()
        self.pool.close()
        self.pool.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
