"""A ``torchrun`` worker for tests/test_engine_loop.py: a streamed MLP over 2 ranks (gloo).

With ``--checkpoint`` rank 0 writes a checkpoint every epoch and every attempt resumes from
it when it exists. ``--stop-after N`` interrupts (as Ctrl-C) after N epochs;
``--kill-in-epoch E`` makes rank 1 of the first attempt (TORCHELASTIC_RESTART_COUNT == 0)
SIGKILL itself at its third step of epoch E. Rank 0 of a run that finishes writes the
weights (npz, no pickle), the history and the attempt it finished in under ``--out``.
"""

import argparse
import faulthandler
import json
import os
import signal
from pathlib import Path

import numpy as np


def _callbacks(args, rank, restart):
    from regtorch.nn.loop import Callback

    class StopAt(Callback):
        def on_epoch_end(self, state):
            if state.epoch + 1 == args.stop_after:
                raise KeyboardInterrupt

    class KillInEpoch(Callback):
        def on_train_begin(self, state):
            self.done, self.steps = state.epoch + 1 if state.times else 0, 0
            state.module.register_forward_pre_hook(self.hook)

        def hook(self, module, inputs):
            if module.training and self.done == args.kill_in_epoch - 1:
                self.steps += 1
                if self.steps == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_end(self, state):
            self.done = state.epoch + 1

    out = []
    if args.stop_after:
        out.append(StopAt())
    if args.kill_in_epoch and restart == 0 and rank == 1:
        out.append(KillInEpoch())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--kill-in-epoch", type=int, default=0)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails, with every stack

    import regtorch.nn.loop as loop
    from regtorch import MLPRegressor, distributed
    from regtorch.data import TableSource
    from regtorch.nn import stream_fit_mlp
    from regtorch.nn.checkpoint import load_checkpoint

    distributed.init_from_env("cpu", timeout_s=60)
    rank, restart = distributed.rank(), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    extra = _callbacks(args, rank, restart)
    real = loop.train

    def train(module, *a, callbacks=(), **kw):
        return real(module, *a, callbacks=[*callbacks, *extra], **kw)

    loop.train = train
    ck = args.checkpoint
    resume = ck if ck is not None and ck.exists() else None
    resumed_at = 0 if resume is None else int(load_checkpoint(resume)["epoch"])
    est = MLPRegressor((16,), batch_size=64, max_epochs=5, random_state=0, device="cpu")
    stream_fit_mlp(
        est,
        TableSource(args.data, "y", batch_rows=256),
        test_fraction=0.2,
        val_fraction=0.2,
        seed=1,
        shuffle_rows=512,
        checkpoint_path=ck,
        checkpoint_every=1,
        resume_from=resume,
    )
    if rank == 0 and not est.history_.interrupted:
        args.out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.numpy() for k, v in est.module_.state_dict().items()}
        np.savez(args.out / "weights.npz", **weights)
        (args.out / "history.json").write_text(json.dumps(est.history_.to_dict()))
        attempts = {"restarts": restart, "resumed_at": resumed_at}
        (args.out / "attempts.json").write_text(json.dumps(attempts))
    distributed.shutdown()


if __name__ == "__main__":
    main()
