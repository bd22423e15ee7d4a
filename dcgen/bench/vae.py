"""``dcgen bench vae``: the VAE ablation of SPEC §5 measured here — training seconds per iteration and peak memory
of Projection+ESS, Projection+Query, AvgPool+ESS and AvgPool+Query at one preset and batch, as ratios to
Projection+ESS — plus encode and decode throughput (clips/s) of Projection+ESS. ``widths`` runs the preset's grid
at another preset's layer widths (e.g. the ``small`` grid at the SPEC's ``carlasc`` widths). The four variants are
the SPEC's encoder (CNN + attention or average pooling) at every preset, the ``small`` one included, which trains
with the column encoder (``models/column_encoder.py``).

Every variant trains the same synthetic-city batch with the full loss (weighted CE + Lovász + β·KL) and AdamW, in
its own freshly spawned process, so no variant inherits another's allocator state; the four processes take their
steps in turn, round by round, so a shift of the machine's load falls on all of them alike. Memory is the peak of the
training steps above the memory held just before the first one (weights, optimizer, batch):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor memory, as the paper reports);
- CPU: the same quantity, peak live tensor bytes, taken from the allocation and free events that
  ``torch.profiler`` records (``profile_memory``) over one extra, untimed step, above the bytes live when it
  began. The ratios use it. Also reported: the process's peak resident set (``VmHWM`` in ``/proc/self/status``,
  reset just before the first step) minus its resident set then (Linux only). That one counts what glibc keeps of
  freed blocks, which depends on the order of allocations rather than on the model: at the small grid and SPEC
  widths it read 1.7 GB for ESS against 1.2 GB of tensors at the peak, and with a fixed ``MALLOC_MMAP_THRESHOLD_``
  the resident peak fell to within 7 % of the tensor peak.
Precision is training's: bf16 autocast on CUDA; on CPU float32, or bf16 autocast with ``cpu_bf16`` (as
``dcgen train vae --cpu-bf16``). The ESS step is mostly 3D convolutions that run near the CPU's float32 peak, the
Query step mostly memory traffic of per-voxel MLP activations, so the time ratio depends on the precision.
Times are medians (and minima, the steadier estimate on a busy machine) over the timed iterations after the warm-up
ones; on a shared machine they move with its load, which the result records.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

VARIANTS = (("projection", "ess"), ("projection", "query"), ("avgpool", "ess"), ("avgpool", "query"))
# SPEC §5 targets for this ablation: ESS at most half the time and 35 % of the memory of the Query decoder.
TARGET_TIME_RATIO = 0.5
TARGET_MEMORY_RATIO = 0.35


def variant_name(projection: str, decoder: str) -> str:
    return f"{projection}+{decoder}"


# a preset's layer widths and the per-preset choices that go with them (heads per width, the CPU preset's lift norm)
WIDTH_FIELDS = ("embed_dim", "encoder_width", "projection_heads", "column_width", "decoder_width", "decoder_hidden",
                "decoder_out", "lift_norm", "query_hidden")


def bench_config(preset: str, widths: str | None = None, projection: str = "projection", decoder: str = "ess"):
    """The ``preset`` VAE config, with the layer widths of the ``widths`` preset when given (e.g. the small grid at
    the carlasc widths), and the given pooling and decoder; in each frame's ego coordinates, as SPEC's Table 3 variants
    are (the small preset's reference frame is a Decision of its own, ``motion_frame.py``)."""
    from dcgen.presets import get_preset

    cfg = get_preset(preset).vae
    if widths is not None:
        other = get_preset(widths).vae
        cfg = cfg.replace(**{f: getattr(other, f) for f in WIDTH_FIELDS})
    return cfg.replace(projection=projection, decoder=decoder, frame="ego")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count (``VmHWM``) from the current RSS (Linux ``clear_refs`` value 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _batch(preset: str, batch_size: int, seed: int):
    import numpy as np
    import torch

    from dcgen.data.grid import grid
    from dcgen.data.synth_city import generate_clip

    g = grid(preset)
    occ = np.stack([generate_clip(g, seed, i)["occupancy"] for i in range(batch_size)])
    counts = np.bincount(occ.ravel(), minlength=g.num_classes)
    return torch.from_numpy(occ.astype(np.int64)), counts


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TrainingStep:
    """One variant's model, optimizer and batch; ``__call__`` runs and times one training step."""

    def __init__(self, preset: str, widths: str | None, projection: str, decoder: str, batch_size: int,
                 device: str, threads: int | None, cpu_bf16: bool = False, seed: int = 0):
        import torch

        from dcgen.models.vae import HexPlaneVAE
        from dcgen.runtime import pick_device
        from dcgen.train.vae_losses import class_weights

        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        torch.manual_seed(seed)
        self.model = HexPlaneVAE(bench_config(preset, widths, projection, decoder)).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        occ_BTXYZ, counts = _batch(preset, batch_size, seed)
        self.occ_BTXYZ = occ_BTXYZ.to(self.device)
        self.weights_K = class_weights(counts).to(self.device)
        self.cpu_bf16 = cpu_bf16

    def __call__(self) -> float:
        from dcgen.train.context import autocast
        from dcgen.train.vae_losses import vae_loss

        dev = self.device
        amp = autocast(dev, amp=True, cpu_bf16=self.cpu_bf16)
        _sync(dev)
        t0 = time.perf_counter()
        with amp:
            logits_BKTXYZ, mu, logvar = self.model(self.occ_BTXYZ)
        loss, _ = vae_loss(logits_BKTXYZ, self.occ_BTXYZ, mu, logvar, self.weights_K)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(dev)
        return time.perf_counter() - t0

    def memory_now(self) -> int:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_peak_rss()

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _status_kib("VmHWM") * 1024


def cpu_tensor_peak(fn) -> int:
    """Peak bytes of CPU tensors live at once while ``fn()`` runs, above those live when it starts, from the
    profiler's allocation events. Blocks allocated before and freed inside count as never freed (an upper bound)."""
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    saved_stderr = os.dup(2)  # the profiler's C++ side logs its start and stop there: keep the bench's log clean
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _variant_process(conn, *args) -> None:
    """Serve one variant in its own process: ``"step"`` → seconds, ``"memory"`` → (base, peak, parameters, tensor
    peak of a further step: None on CUDA, where ``peak`` already is a tensor peak)."""
    step = _TrainingStep(*args)
    step.reset_peak()
    base = step.memory_now()
    conn.send("ready")
    while (msg := conn.recv()) != "stop":
        if msg == "step":
            conn.send(step())
        elif msg == "memory":
            peak = step.peak()
            tensor_peak = None if step.device.type == "cuda" else cpu_tensor_peak(step)
            conn.send((base, peak, step.model.num_parameters(), tensor_peak))
    conn.close()


def measure_training(preset: str, widths: str | None, batch_size: int, iters: int, warmup: int, device: str,
                     threads: int | None, log=None, cpu_bf16: bool = False) -> dict:
    """Every variant's s/iter and peak step memory. The four run in their own processes at once but step in
    turn, round after round (the order rotating), so a change of machine load hits them all alike."""
    ctx = get_context("spawn")
    names = [variant_name(p, d) for p, d in VARIANTS]
    procs, conns = {}, {}
    try:
        for (projection, decoder), name in zip(VARIANTS, names):
            parent, child = ctx.Pipe()
            procs[name] = ctx.Process(target=_variant_process, daemon=True,
                                      args=(child, preset, widths, projection, decoder, batch_size, device,
                                            threads, cpu_bf16))
            procs[name].start()
            conns[name] = parent
        def recv(name: str):
            try:
                return conns[name].recv()
            except EOFError:
                raise RuntimeError(f"bench process of {name} died (exit code {procs[name].exitcode}); out of "
                                   "memory? try a smaller --batch-size") from None

        for name in names:
            recv(name)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(warmup + iters):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                conns[name].send("step")
                seconds = recv(name)
                if r >= warmup:
                    times[name].append(seconds)
            if log is not None:
                log(f"  round {r + 1}/{warmup + iters}" + (" (warm-up)" if r < warmup else ""))
        out = {}
        for name in names:
            conns[name].send("memory")
            base, peak, params, tensor_peak = recv(name)
            out[name] = {"s_per_iter": statistics.median(times[name]), "s_per_iter_min": min(times[name]),
                         "iter_seconds": times[name], "parameters": params}
            if tensor_peak is None:
                out[name].update(peak_step_bytes=int(peak - base), peak_bytes=int(peak))
            else:
                out[name].update(peak_step_bytes=int(tensor_peak), peak_rss_step_bytes=int(peak - base),
                                 peak_rss_bytes=int(peak))
        return out
    finally:
        for name, conn in conns.items():
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for proc in procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def measure_codec(preset: str, widths: str | None, batch_size: int, iters: int, warmup: int, device: str,
                  threads: int | None, cpu_bf16: bool = False, seed: int = 0) -> dict:
    """Encode (clip → μ planes) and decode (planes → class ids) clips/s of Projection+ESS in eval mode."""
    import torch

    from dcgen.models.vae import HexPlaneVAE
    from dcgen.runtime import pick_device
    from dcgen.train.context import autocast

    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = HexPlaneVAE(bench_config(preset, widths)).to(dev).eval()
    occ_BTXYZ, _ = _batch(preset, batch_size, seed)
    occ_BTXYZ = occ_BTXYZ.to(dev)
    amp = autocast(dev, amp=True, cpu_bf16=cpu_bf16)

    def timed(fn) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    with torch.no_grad(), amp:
        mu, _ = model.encode(occ_BTXYZ)
        enc = [timed(lambda: model.encode(occ_BTXYZ)) for _ in range(warmup + iters)][warmup:]
        dec = [timed(lambda: model.decode(mu).argmax(1)) for _ in range(warmup + iters)][warmup:]
    return {"encode_clips_per_s": batch_size / statistics.median(enc),
            "decode_clips_per_s": batch_size / statistics.median(dec),
            "encode_seconds": enc, "decode_seconds": dec}


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_vae(preset: str = "small", batch_size: int = 2, iters: int = 6, warmup: int = 2, device: str = "auto",
              threads: int | None = None, widths: str | None = None, log=None, cpu_bf16: bool = False) -> dict:
    """The four variants' training cost as ratios to Projection+ESS, and encode/decode clips/s (JSON-able).
    ``cpu_bf16`` runs every variant on CPU under bf16 autocast, as ``dcgen train vae --cpu-bf16`` trains (on CUDA
    the variants always run under bf16 autocast, as training does by default)."""
    import torch

    from dcgen.runtime import pick_device
    from dcgen.train.context import check_cpu_bf16

    config = bench_config(preset, widths)  # an unknown preset fails here, before any process starts
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch size >= 1, iters >= 1, warmup >= 0; got {batch_size}, {iters}, {warmup}")
    dev = pick_device(device)
    threads = threads or (None if dev.type == "cuda" else os.cpu_count())
    load_before = os.getloadavg()
    cpu_bf16 = cpu_bf16 and dev.type == "cpu"
    if cpu_bf16:
        check_cpu_bf16()
    variants = measure_training(preset, widths, batch_size, iters, warmup, str(dev), threads, log, cpu_bf16)
    ref = variants[variant_name("projection", "ess")]
    for v in variants.values():
        v["time_ratio"] = v["s_per_iter"] / ref["s_per_iter"]
        v["time_ratio_min"] = v["s_per_iter_min"] / ref["s_per_iter_min"]
        v["memory_ratio"] = v["peak_step_bytes"] / max(ref["peak_step_bytes"], 1)
        if "peak_rss_step_bytes" in v:
            v["memory_rss_ratio"] = v["peak_rss_step_bytes"] / max(ref["peak_rss_step_bytes"], 1)
    ess_vs_query = {}
    for projection in ("projection", "avgpool"):
        ess, query = variants[variant_name(projection, "ess")], variants[variant_name(projection, "query")]
        ess_vs_query[projection] = {"time": ess["s_per_iter"] / query["s_per_iter"],
                                    "time_min": ess["s_per_iter_min"] / query["s_per_iter_min"],
                                    "memory": ess["peak_step_bytes"] / max(query["peak_step_bytes"], 1)}
        if "peak_rss_step_bytes" in ess:
            ess_vs_query[projection]["memory_rss"] = (ess["peak_rss_step_bytes"]
                                                      / max(query["peak_rss_step_bytes"], 1))
    if log is not None:
        log("  encode / decode ...")
    codec = _in_fresh_process(measure_codec, preset, widths, batch_size, iters, warmup, str(dev), threads, cpu_bf16)
    main = ess_vs_query["projection"]
    return {
        "preset": preset, "widths": widths or preset, "config": config.replace(decoder="ess").to_dict(),
        "batch_size": batch_size, "iters": iters, "warmup": warmup, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": threads, "precision": "bf16 autocast" if dev.type == "cuda" or cpu_bf16 else "float32",
        "memory_measure": ("torch.cuda.max_memory_allocated above the allocation before the first step"
                           if dev.type == "cuda" else
                           "peak live tensor bytes of one untimed step (torch.profiler allocation events) above "
                           "those live at its start; peak_rss_*: peak RSS (VmHWM) above the RSS before the first "
                           "step, each variant in a fresh process"),
        "variants": variants, "ess_vs_query": ess_vs_query, **codec,
        "targets": {"ess_time_vs_query_at_most": TARGET_TIME_RATIO,
                    "ess_memory_vs_query_at_most": TARGET_MEMORY_RATIO,
                    "met": main["time"] <= TARGET_TIME_RATIO and main["memory"] <= TARGET_MEMORY_RATIO},
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "torch": torch.__version__,
    }
