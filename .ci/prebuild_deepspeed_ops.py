"""Compile DeepSpeed's CPU shared-memory collective op once, at set-up.

DeepSpeed JIT-compiles it (about 35 s on a 2-core machine) the first time a multi-process
DeepSpeed run starts on a CPU, into ~/.cache/torch_extensions; built here, no training run or
test pays for it. Where the accelerator has no such op (GPUs), there is nothing to do.
A failure is reported and set-up goes on: DeepSpeed then compiles it when first needed.
"""

import logging
import sys

logging.disable(logging.WARNING)
try:
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load(verbose=False)
        print(f"deepspeed: {builder.NAME} op built")
except Exception as exc:  # set-up must not fail for an optional speed-up
    print(f"deepspeed: the shared-memory op was not prebuilt ({type(exc).__name__}: {exc}); "
          "DeepSpeed compiles it on first use", file=sys.stderr)
