"""Helper process for the SIGKILL test: imports once, then forks one extraction child per command.

Forking a process that has imported torch but never run an op is safe, and it saves the test a multi-second
interpreter start per run. Protocol on stdin/stdout, one line each:
``run ROOT STORE MODEL`` -> ``pid N`` (child started) ... ``exit N CODE`` (child ended; CODE -9 when SIGKILLed).
"""

from __future__ import annotations

import os
import sys

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (imported here once, not per child)
from diffusers.models.attention_processor import AttnProcessor  # noqa: F401
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

from dift_fast.config import DiftConfig
from dift_fast.extractor import DiftExtractor  # noqa: F401
from dift_fast.store import StoreJob, extract_to_store


def child(root: str, store: str, model: str) -> int:
    config = DiftConfig.from_preset("spair", model=model, ensemble_size=2, image_size=(64, 48), device="cpu")
    job = StoreJob(inputs=[root], out=store, config=config, decode_workers=2, store_dtype="fp16")
    return 0 if extract_to_store(job).ok else 1


def main() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd != "run":
            continue
        pid = os.fork()
        if pid == 0:
            code = 2
            try:
                code = child(*args)
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"exit {pid} {code}", flush=True)


if __name__ == "__main__":
    main()
