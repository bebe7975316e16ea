#!/usr/bin/env python3
"""Say whether dift-fast can be installed here without downloading anything, and name what is missing.

It checks what ``pip install --no-build-isolation --no-deps -e .`` relies on being present already: the build
requirements (scikit-build-core, nanobind, CMake, ninja or make), the runtime requirements (torch, diffusers, ...),
any extras you ask for, and the optional compilers that decide which kernels get built (a C++ compiler for the CPU
kernels, nvcc for the CUDA ones). Every requirement is read from ``pyproject.toml``, so this list never drifts from
the package's. It imports neither dift_fast nor torch, and touches no network.

    python scripts/check_install.py                   # build + runtime requirements, compilers
    python scripts/check_install.py --extras onnx,viz # also these extras ("all" for every one)
    python scripts/check_install.py --json            # one JSON object

Exit status: 0 when the install can proceed offline, 1 when something required is missing (each is named, with
how to get it), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "dift-fast"
CMAKE_MIN = (3, 18)  # CMakeLists.txt: cmake_minimum_required(VERSION 3.18...)

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors a TOML reader
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:  # pip vendors packaging too
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]


def item(group: str, name: str, ok: bool, found: str, fix: str = "", required: bool = True) -> dict[str, Any]:
    return {"group": group, "name": name, "ok": ok, "found": found, "fix": "" if ok else fix, "required": required}


def python_requirement(group: str, spec: str, why: str = "") -> dict[str, Any]:
    """One ``pyproject.toml`` requirement: installed, and in the required range?"""
    req = Requirement(spec)
    fix = f'pip install "{spec}"{why}'
    if req.name == "torch":
        fix = (
            "install torch first, the build for your hardware (CPU or your CUDA version; see pytorch.org); "
            f"dift-fast never installs torch itself. Needs {spec}"
        )
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return item(group, spec, False, "not installed", fix)
    ok = not req.specifier or req.specifier.contains(Version(version), prereleases=True)
    return item(group, spec, ok, version, fix)


def expand_extras(optional: dict[str, list[str]], names: list[str]) -> list[str]:
    """Requirement strings of the named extras, following ``dift-fast[...]`` self-references."""
    out: list[str] = []
    seen: set[str] = set()
    todo = list(names)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml defines: {', '.join(sorted(optional))}")
        seen.add(extra)
        for spec in optional[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == PROJECT:
                todo.extend(sorted(req.extras))
            elif spec not in out:
                out.append(spec)
    return out


def tool_version(exe: str, args: list[str] | None = None) -> str:
    try:
        out = subprocess.run([exe, *(args or ["--version"])], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unusable ({err})"
    text = (out.stdout or out.stderr).strip()
    match = re.search(r"\d+\.\d+(\.\d+)?", text)
    return match.group(0) if match else (text.splitlines()[0] if text else "unknown version")


def find_tool(env_var: str | None, candidates: list[str]) -> tuple[str | None, str]:
    """(path or None, where it came from): ``$env_var`` first (as CMake does), then PATH."""
    if env_var and os.environ.get(env_var):
        value = os.environ[env_var].split()[0]
        path = shutil.which(value) or (value if Path(value).is_file() else None)
        return path, f"${env_var}={os.environ[env_var]}" + ("" if path else " (not found)")
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path, "PATH"
    return None, "PATH"


def build_tools() -> list[dict[str, Any]]:
    out = []
    cmake = shutil.which("cmake")
    if cmake:
        version = tool_version(cmake)
        ok = bool(re.match(r"\d", version)) and tuple(int(x) for x in version.split(".")[:2]) >= CMAKE_MIN
        out.append(
            item(
                "build",
                f"cmake>={'.'.join(map(str, CMAKE_MIN))}",
                ok,
                f"{version} ({cmake})",
                'pip install "cmake>=3.18" (or your system package manager)',
            )
        )
    else:
        out.append(
            item("build", "cmake>=3.18", False, "not on PATH", 'pip install "cmake>=3.18" or apt-get install cmake')
        )
    ninja, make = shutil.which("ninja"), shutil.which("make")
    generator = ninja or make
    out.append(
        item(
            "build",
            "ninja or make",
            bool(generator),
            f"{tool_version(generator)} ({generator})" if generator else "neither on PATH",
            "pip install ninja (or apt-get install ninja-build / make)",
        )
    )
    return out


def compilers(cuda_mode: str) -> tuple[list[dict[str, Any]], str, str]:
    """The optional compilers, and the kernel variant CMake will build with them: (items, variant, why)."""
    cxx, cxx_from = find_tool("CXX", ["c++", "g++", "clang++"])
    nvcc, nvcc_from = find_tool("CUDACXX", ["nvcc"])
    if nvcc is None and not os.environ.get("CUDACXX") and Path("/usr/local/cuda/bin/nvcc").is_file():
        nvcc_from = "PATH (/usr/local/cuda/bin/nvcc exists but is not on PATH: export PATH=/usr/local/cuda/bin:$PATH)"
    need_cuda = cuda_mode == "ON"
    items = [
        item(
            "kernels",
            "C++ compiler",
            cxx is not None,
            f"{cxx} ({tool_version(cxx)}, from {cxx_from})" if cxx else f"none ({cxx_from})",
            "optional: apt-get install g++ (or set CXX). Without one no kernels are built and the pure-torch "
            "twins compute identical features, more slowly",
            required=need_cuda,
        ),
        item(
            "kernels",
            "CUDA compiler (nvcc)",
            nvcc is not None or cuda_mode == "OFF",
            f"{nvcc} ({tool_version(nvcc)}, from {nvcc_from})" if nvcc else f"none ({nvcc_from})",
            "optional: the CUDA toolkit's nvcc on PATH (or set CUDACXX) for the CUDA kernels; without it CUDA "
            "tensors use the pure-torch twins",
            required=need_cuda,
        ),
    ]
    if cxx is None:
        return items, "none", "no C++ compiler: no native kernels (pure-torch twins, identical features)"
    if cuda_mode == "OFF":
        return items, "cpu", "DIFT_FAST_CUDA=OFF: CPU kernels only"
    if nvcc is None:
        if need_cuda:
            return items, "error", "DIFT_FAST_CUDA=ON but no nvcc: the build will stop"
        return items, "cpu", "DIFT_FAST_CUDA=AUTO and no nvcc: CPU kernels only (CUDA tensors use the twins)"
    return items, "cuda", f"CPU and CUDA kernels (DIFT_FAST_CUDA={cuda_mode})"


def check(pyproject: Path, extras: list[str]) -> dict[str, Any]:
    meta = tomllib.loads(pyproject.read_text())
    project, build = meta["project"], meta["build-system"]
    optional = project.get("optional-dependencies", {})
    if extras == ["all"] and "all" not in optional:
        extras = sorted(k for k in optional if k != "dev")
    cuda_mode = os.environ.get("DIFT_FAST_CUDA", "AUTO").upper()
    items = []
    py = ".".join(map(str, sys.version_info[:3]))
    spec = project.get("requires-python", "")
    ok = not spec or Requirement(f"python{spec}").specifier.contains(py)
    items.append(item("python", f"python{spec}", ok, py, "use a Python that meets requires-python"))
    items += [python_requirement("build", s, " (a build requirement)") for s in build["requires"]]
    items += build_tools()
    compiler_items, variant, why = compilers(cuda_mode)
    items += compiler_items
    items += [python_requirement("runtime", s) for s in project.get("dependencies", [])]
    items += [python_requirement("extras", s) for s in expand_extras(optional, extras)]
    missing = [i for i in items if i["required"] and not i["ok"]]
    return {
        "python": sys.executable,
        "pyproject": str(pyproject),
        "DIFT_FAST_CUDA": cuda_mode,
        "kernels_variant": variant,
        "kernels_reason": why,
        "extras": extras,
        "items": items,
        "missing": [i["name"] for i in missing],
        "ok": not missing and variant != "error",
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"dift-fast install check: {result['python']} (DIFT_FAST_CUDA={result['DIFT_FAST_CUDA']})"]
    group = None
    titles = {
        "python": "python",
        "build": "build requirements (pip install --no-build-isolation uses what is installed)",
        "kernels": "compilers (optional: they decide which kernels are built)",
        "runtime": "runtime requirements (pip install --no-deps expects them installed)",
        "extras": f"extras {','.join(result['extras'])}",
    }
    for i in result["items"]:
        if i["group"] != group:
            group = i["group"]
            lines.append(titles[group] + ":")
        status = "ok" if i["ok"] else ("MISSING" if i["required"] else "absent")
        lines.append(f"  {status:<8} {i['name']:<28} {i['found']}")
        if i["fix"]:
            lines.append(f"  {'':<8} -> {i['fix']}")
    lines.append(f"kernels that this install would build: {result['kernels_variant']} ({result['kernels_reason']})")
    if result["ok"]:
        lines.append(
            "OK: nothing required is missing. Install offline with:\n"
            "  python -m pip install --no-build-isolation --no-deps --no-index -e ."
        )
    else:
        lines.append(f"NOT READY: missing {', '.join(result['missing']) or 'a CUDA compiler (DIFT_FAST_CUDA=ON)'}")
        lines.append(
            "Offline: on a machine with network and the same Python and platform, `pip download --no-deps -d DIR "
            "'SPEC'` for each missing package, carry DIR here, then `pip install --no-index --no-deps DIR/*.whl`"
            " (scripts/gpu_check.sh --prepare does this for the GPU test image)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="", help="comma-separated extras to check too, or 'all'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    result = check(args.pyproject, extras)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
