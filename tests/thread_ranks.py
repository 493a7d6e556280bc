"""Threads as ranks: a stand-in for torch.distributed in tests of the collectives."""

import threading


class _Ranks:
    """Threads as ranks: regtorch.distributed's collectives exchange tensors between them."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.local = threading.local()

    def all_gather(self, t):
        self.barrier.wait()  # every rank has read the previous round
        self.slots[self.local.rank] = t.clone()
        self.barrier.wait()
        return [s.clone() for s in self.slots]

    def run(self, fn):
        out, errors = [None] * self.world, []

        def target(r):
            self.local.rank = r
            try:
                out[r] = fn(r)
            except Exception as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out
