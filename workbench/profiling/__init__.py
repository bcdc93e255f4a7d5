"""Profiling: where a training step's time goes, on CPU, CUDA or an Ascend NPU, with one API.

    from workbench.profiling import ProfileConfig, profile_steps, analyze
    run = profile_steps(step_fn, ProfileConfig(wait=1, warmup=1, active=3), out_dir="runs/profile")
    report = analyze(run, flops_per_step=6 * n_params * tokens, peak=get_device().peak_flops())
    report.save("runs/profile")   # trace.json (Perfetto), op tables (CSV/JSON), figures (plotly HTML)

Modules, one job each: ``backends`` (which profiler for which device), ``session`` (run N steps under it and write
the Chrome trace), ``trace`` (parse a trace: nesting, self time, categories), ``categories``, ``tables`` (op and
category tables, top-N), ``breakdown`` (forward/backward/optimizer/data/communication, exposed vs overlapped),
``waterfall`` (MFU waterfall), ``memory`` (peak and timeline), ``figures`` (plotly), ``analysis`` (all of it),
``toy`` (a tiny model for tests and workshops), ``cli`` (``workbench profile``).
Notebook: notebooks/04_profiling.ipynb.
"""

import importlib

# Names are imported on first use, so ``workbench.profiling.session`` (e.g. in a distributed worker) does not pay for
# plotly, which only the analysis and figures need.
_EXPORTS = {
    "ProfileReport": "analysis", "analyze": "analysis", "compare": "analysis",
    "CATEGORIES": "categories", "categorize": "categories",
    "ProfileConfig": "session", "ProfileRun": "session", "profile_steps": "session",
    "Trace": "trace", "load_trace": "trace",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench.profiling' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"workbench.profiling.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
