"""PyTorch's ``expandable_segments``, which trainers turn on, kept out of the engines' offload.

Why: colocated trainers set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` against fragmentation
(verl#1545, OpenRLHF#1011, TRL's memory guide), and both engines' offload tracks its memory through
allocations that expandable segments bypass:

* vLLM's sleep-mode allocator serves torch from a memory pool with its own allocator
  (``device_allocator/cumem.py``). Up to 0.20.0 it asserts at the start: "Expandable segments are not
  compatible with memory pool" (``cumem.py:147`` in 0.9.2; pytorch#147851). 0.20.1 - 0.30.0 turn the
  flag off while the pool is in use, but read only ``PYTORCH_CUDA_ALLOC_CONF`` (torch 2.9+ also reads
  ``PYTORCH_ALLOC_CONF``, first: set there, the pool runs with the flag on, which a later vLLM's comment
  says leaves sleep freeing nothing and torch releases with pytorch#148378 refuse) and write the bare
  flag, which resets the caller's other allocator options (torch parses a settings string whole). From
  0.31 vLLM reads both and keeps the rest (``device_allocator/alloc_conf.py``).
  Read in every release's wheel (2026-12-05). The pool is filled only during the start in the releases
  before 0.31 (``v1/worker/gpu_worker.py:180, 245`` in 0.9.2: weights, KV cache).
* SGLang's torch_memory_saver takes its memory by hooking ``cudaMalloc`` in the scheduler (``LD_PRELOAD``);
  with the flag on, torch maps memory through the driver's virtual memory API instead, and
  ``release_memory_occupation`` frees nothing (torch_memory_saver#24; later versions refuse to start).

So SGLang's processes start with the flag off in their environment, and vLLM before 0.31, which runs in
this process, starts with it off in the environment and in torch's live setting; both are put back when
the start returns. The live setting is read from torch where CUDA has started (its memory snapshot's
``allocator_settings``, as vLLM 0.31 reads it), else from the environment: a trainer that turned the flag
off at run time keeps it off. Allocations this process makes in other threads during the start get
segments without the flag.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

log = logging.getLogger("rollout_shims")

FLAG = "expandable_segments"
VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
"""Where torch reads its allocator settings, in its order: the first set one counts (torch 2.9+)."""
SINCE_ALLOC_CONF = Version("2.9")
"""The first torch to read ``PYTORCH_ALLOC_CONF`` (libc10.so of the 2.8.0 and 2.9.0 wheels); before it, only
``PYTORCH_CUDA_ALLOC_CONF`` counts."""
VLLM_KEEPS_THEM_OFF = SpecifierSet(">=0.31")
"""vLLM releases that turn the flag off around their pool themselves, from either variable, keeping the
other options (``cumem.py:382-428`` in 0.33.0)."""


def flag_on(conf: str) -> bool:
    """Whether a settings string (``"a:1,expandable_segments:True"``) turns expandable segments on. Where
    it names the flag twice the last one counts, as in torch's parser (its ``parseExpandableSegments``
    sets the option at each occurrence: c10/cuda/CUDAAllocatorConfig.cpp, c10/core/AllocatorConfig.cpp
    from 2.9)."""
    on = False
    for field in conf.split(","):
        name, _, value = field.partition(":")
        if name.strip() == FLAG:
            on = value.strip().lower() in ("true", "1")
    return on


def with_flag_off(conf: str) -> str:
    """``conf`` with expandable segments off and every other option as it was (torch resets options a
    settings string leaves out)."""
    fields = [field.strip() for field in conf.split(",") if field.strip()]
    kept = [field for field in fields if field.partition(":")[0].strip() != FLAG]
    return ",".join([*kept, f"{FLAG}:False"])


def torch_reads(torch_version: str | None) -> tuple[str, ...]:
    """The variables a torch release reads, in its order (both when the release is unknown)."""
    try:
        return VARIABLES if torch_version is None or Version(torch_version) >= SINCE_ALLOC_CONF else VARIABLES[1:]
    except InvalidVersion:
        return VARIABLES


def installed_torch() -> str | None:
    """torch's version from its metadata (no import), None when it is not installed."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def in_effect(torch_version: str | None) -> str:
    """The settings string this process's torch takes from the environment."""
    return next((os.environ[name] for name in torch_reads(torch_version) if os.environ.get(name)), "")


@contextlib.contextmanager
def off_in_environment() -> Iterator[list[str]]:
    """While the block runs, every allocator variable that turns the flag on has it off (its other options
    kept); yields the names changed. Each is put back as it was when the block ends."""
    before = {name: os.environ[name] for name in VARIABLES if flag_on(os.environ.get(name, ""))}
    try:
        for name, conf in before.items():
            os.environ[name] = with_flag_off(conf)
        yield sorted(before)
    finally:
        os.environ.update(before)


def live_settings() -> tuple[bool | None, str]:
    """(flag, whole settings string) of this process's allocator as torch reports them once CUDA has started
    (None and "" where it does not: CUDA not started, or a torch that reports neither)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None, ""
        settings = torch.cuda.memory._snapshot().get("allocator_settings") or {}
    except Exception:  # a torch without the snapshot's settings: the environment says it
        return None, ""
    flag = settings.get(FLAG)
    conf = next((settings[name] for name in VARIABLES if isinstance(settings.get(name), str)), "")
    return (bool(flag) if flag is not None else None), conf


def set_live(conf: str) -> None:
    """Give this process's torch allocator a whole settings string (the accelerator-wide setter from torch
    2.9, the CUDA one before it)."""
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is not None:
        setter(conf)
    else:
        torch.cuda.memory._set_allocator_settings(conf)


@contextlib.contextmanager
def off_for_engine_processes(engine: str) -> Iterator[list[str]]:
    """Around the start of an engine whose processes are its own (SGLang): they inherit the environment."""
    with off_in_environment() as changed:
        if changed:
            log.info("%s: the engine's processes start with %s off (%s): its offload cannot free memory allocated "
                     "with them; this process keeps its setting", engine, FLAG, ", ".join(changed))
        yield changed


@contextlib.contextmanager
def off_for_vllm_start(release: str) -> Iterator[list[str]]:
    """Around ``vllm.LLM(...)`` in this process: off in the environment and in torch's live setting for
    releases before 0.31, then both put back; nothing for the releases that do it themselves."""
    if VLLM_KEEPS_THEM_OFF.contains(release, prereleases=True):
        yield []
        return
    on, conf = live_or_environment()
    with off_in_environment() as changed:
        if not on:
            yield changed
            return
        log.info("vLLM %s: its sleep-mode memory pool is allocated with %s off (vLLM %s); this process's "
                 "setting is put back once the engine has started", release, FLAG,
                 "refuses them" if Version(release) < Version("0.20.1") else "would reset the other allocator options")
        with off_live(conf):
            yield changed


def live_or_environment() -> tuple[bool, str]:
    """Whether this process's allocator makes expandable segments now (torch's live setting where it reports
    one, else the environment's), and the whole settings string to put back after :func:`off_live`."""
    live_flag, live_conf = live_settings()
    env_conf = in_effect(installed_torch())
    conf = next((c for c in (live_conf, env_conf) if flag_on(c)), f"{FLAG}:True")
    return (live_flag if live_flag is not None else flag_on(env_conf)), conf


@contextlib.contextmanager
def off_live(conf: str) -> Iterator[None]:
    """While inside, this process's allocator makes segments without the flag (blocks of its expandable
    segments are not handed out either: torch's ``get_free_block`` skips them while the flag is off, for
    this use); ``conf``, the whole settings string, is put back after, also on an error."""
    set_live(with_flag_off(conf))
    try:
        yield
    finally:
        set_live(conf)
