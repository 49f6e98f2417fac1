"""Build-time check of the worker image's CUDA line (run by docker/worker.Dockerfile).

Fails the build, with one line per problem, unless:
- torch is the pinned release and its wheel targets the pinned CUDA (torch.version.cuda);
- every nvidia-* CUDA wheel installed is of that CUDA major (no cu13 library beside a cu12
  torch, which pip could pull in through another package);
- bitsandbytes ships the native library for exactly that CUDA version
  (libbitsandbytes_cudaXYZ.so), the one it loads on a GPU node;
- the trial stack imports (no GPU needed: nothing here initialises CUDA).

    python check-worker-image.py --torch 2.10.0 --cuda 12.8
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import importlib.util
import re
import sys
from pathlib import Path

IMPORTS = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "ray.train", "worker")


def problems(torch_version: str, cuda: str) -> list[str]:
    out: list[str] = []
    import torch

    release = torch.__version__.split("+")[0]
    if release != torch_version:
        out.append(f"torch is {torch.__version__}, the image pins {torch_version}")
    if torch.version.cuda != cuda:
        out.append(f"torch.version.cuda is {torch.version.cuda}, the image pins CUDA {cuda}")

    major = cuda.split(".")[0]
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        match = re.fullmatch(r"nvidia-[a-z0-9-]+-cu(\d+)", name)
        if match and match.group(1) != major:
            out.append(f"{name} {dist.version} is a CUDA {match.group(1)} wheel beside CUDA {cuda}")
        if name == "cuda-toolkit" and not dist.version.startswith(major + "."):
            out.append(f"cuda-toolkit {dist.version} is not CUDA {major}")

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None:
        out.append("bitsandbytes is not installed")
    else:
        library = Path(spec.origin).parent / f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"
        if not library.is_file():
            out.append(f"bitsandbytes has no {library.name} for CUDA {cuda}")

    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is a broken image
            out.append(f"import {module}: {type(exc).__name__}: {exc}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", required=True, help="pinned torch release, e.g. 2.10.0")
    parser.add_argument("--cuda", required=True, help="CUDA version of its wheel, e.g. 12.8")
    args = parser.parse_args()
    found = problems(args.torch, args.cuda)
    for line in found:
        print(f"check-worker-image: {line}", file=sys.stderr)
    if not found:
        import bitsandbytes
        import torch

        print(f"check-worker-image: torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"bitsandbytes {bitsandbytes.__version__} with libbitsandbytes_cuda"
              f"{args.cuda.replace('.', '')}.so: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
