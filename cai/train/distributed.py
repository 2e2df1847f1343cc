"""How a multi-process (`accelerate launch`) run ends without the gloo teardown deadlock.

Tearing down DDP and a gloo process group from Python can hang or abort a finished run: the group's destructor
joins its worker threads while holding the GIL, and a worker that is still freeing the last collective it ran
(a barrier keeps earlier all-reduces alive, and their tensors belong to Python objects) waits for that same GIL.
py-spy showed exactly that on a stuck rank: `Reducer::~Reducer -> ProcessGroupGloo::~ProcessGroupGloo ->
thread::join` in the main thread, `~AsyncBarrierWork -> ~AsyncAllreduceWork -> decref_pyobject ->
gil_scoped_acquire` in the gloo thread. Destroyed later, at interpreter exit, the same threads abort the process
instead (`terminate called without an active exception`, exit -6). Neither depends on cai's code: any collective
in flight when the group dies can do it, so no ordering of Python calls makes the in-process teardown safe.

So the group is never destroyed in-process:
1. `release_model` (end of every trainer): once every process has reached the same point, the DDP wrapper is
   dropped while the group is still registered, so its Reducer can never be the object that destroys the group,
   and the group stays usable for the next trainer of a pipeline;
2. `end_process` (end of the `cai` command): when a process group exists, the outputs are flushed and the
   process leaves with `os._exit`, after the last collective has completed on every process (a final barrier),
   so the worker threads are never joined and nothing is left to write. The OS closes the sockets.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def group_initialized() -> bool:
    """Whether this process joined a torch.distributed group (without importing torch when it is not loaded)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def release_model(accelerator: Any, model: Any) -> Any:
    """The plain model of a finished trainer, its DDP wrapper dropped while the group is alive; trackers closed."""
    for tracker in accelerator.trackers:
        tracker.finish()
    if accelerator.num_processes == 1:
        return model
    accelerator.wait_for_everyone()
    plain = accelerator.unwrap_model(model)
    accelerator._models.clear()  # accelerate's own reference to the wrapper
    return plain


def end_process(code: int) -> int:
    """Return `code`, or, in a process of a distributed group, flush and leave at once with it (see above)."""
    if not group_initialized():
        return code
    import torch.distributed as dist

    try:
        dist.barrier()  # every process is done with every collective before any leaves
    except Exception:  # a peer already failed: leaving is all that is left to do
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
