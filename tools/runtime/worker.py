"""A persistent job runner: one interpreter per run keeps its imports and CUDA context.

Started by LocalPlatform as `python worker.py` in the run dir (its own process session), or by DockerPlatform as
`python .tao/worker.py --requests .tao/runner.fifo` in a long-lived container of the run's image (the runner). It reads
one JSON request per line on stdin (or the FIFO) and runs each job in this process, one at a time, as `python script.py args...` would:
`runpy.run_path(script, run_name="__main__")` with sys.argv set, the job's env applied, stdout and stderr (fd 1 and 2)
sent to the job's own log, and the exit status written to the job's own exit file (atomically), so each job stays
one recorded run with its own log and exit code. A job that fails (non-zero exit, an exception) ends the worker after
its exit file is written: the next job gets a fresh interpreter. Project modules (common, task, ...) stay imported
between jobs unless a project .py file changed. stdin closing (the agent exited) ends the worker once the running
job is done, so a detached training outlives the agent as before.

Standard library only at import time (the run's Python may not have tao_finetune); `{"op": "prewarm"}` imports
torch and transformers and creates the CUDA context ahead of the first job.
Sources: https://docs.python.org/3/library/runpy.html#runpy.run_path (runs with a temporary __main__ module, so
fork-based pools in the job resolve its functions), https://docs.python.org/3/library/os.html#os.dup2.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
import time
import traceback

STATE: dict = {"py_mtimes": None}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _project_mtimes(root: str) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("data", "checkpoints", "logs", "reports", ".tao", "__pycache__", "output")]
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(dirpath, f)
                try:
                    out[p] = os.stat(p).st_mtime_ns
                except OSError:
                    pass
    return out


def _purge_project_modules(root: str) -> None:
    """Forget modules loaded from the project dir when any of its .py files changed since the last job."""
    now = _project_mtimes(root)
    if STATE["py_mtimes"] is not None and now != STATE["py_mtimes"]:
        prefix = os.path.join(root, "")
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None) or ""
            if f.startswith(prefix):
                del sys.modules[name]
    STATE["py_mtimes"] = now


def _model_module(root: str) -> str | None:
    """transformers.models.<type>.modeling_<type> for the run's model_id in config.yaml: a local folder's config.json,
    or a Hub id's config.json in the Hub cache (probe_model put it there in Step 1); None when neither is there."""
    try:
        import yaml

        with open(os.path.join(root, "config.yaml")) as f:
            model_id = str((yaml.safe_load(f) or {}).get("model_id") or "")
        path = os.path.join(model_id, "config.json")
        if not os.path.isfile(path):
            from huggingface_hub import try_to_load_from_cache  # transformers' own dependency

            cached = try_to_load_from_cache(model_id, "config.json")
            path = cached if isinstance(cached, str) else path
        with open(path) as f:
            kind = str(json.load(f).get("model_type") or "").replace("-", "_")
    except (OSError, ValueError, ImportError, AttributeError, TypeError):
        return None
    return f"transformers.models.{kind}.modeling_{kind}" if kind.isidentifier() else None


def prewarm() -> dict:
    """Import the training stack (with the run's model module) and create the CUDA context, cuBLAS and cuDNN handles
    before the first job; CUDA starts in a thread while transformers imports."""
    import importlib
    import threading

    t0 = time.perf_counter()
    info: dict = {}
    try:
        import numpy  # noqa: F401
        import torch

        def cuda() -> None:
            try:
                if not torch.cuda.is_available():
                    return
                x = torch.ones(64, 64, device="cuda", requires_grad=True)
                img = torch.ones(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
                conv = torch.nn.Conv2d(3, 8, 3).cuda().to(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    ((x @ x).sum() + conv(img).float().sum()).backward()
                torch.cuda.synchronize()
                info["cuda"] = torch.cuda.get_device_name(0)
            except Exception as err:  # noqa: BLE001  (the job that needs CUDA reports it in its own log)
                info["cuda_error"] = f"{type(err).__name__}: {err}"

        th = threading.Thread(target=cuda, name="cuda-init")
        th.start()
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, get_scheduler  # noqa: F401
        import transformers.modeling_utils  # noqa: F401

        module = _model_module(os.getcwd())
        if module:
            try:
                importlib.import_module(module)
                info["model_module"] = module
            except ImportError:
                pass
        th.join()
        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except Exception as err:  # noqa: BLE001  (a broken stack shows up in the job that needs it, with its own log)
        info["error"] = f"{type(err).__name__}: {err}"
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return info


def run_job(req: dict) -> int:
    """Run one script as __main__ with fd 1/2 on the job's log; returns its exit status."""
    root = os.getcwd()
    argv = list(req["argv"])
    for k, v in (req.get("env") or {}).items():
        os.environ[k] = v
    _purge_project_modules(root)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    code = 0
    try:
        if req.get("code") is not None:
            exec(compile(req["code"], "<worker-exec>", "exec"), {"__name__": "__worker_exec__"})
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as err:
        if err.code is None:
            code = 0
        elif isinstance(err.code, int):
            code = err.code
        else:
            print(err.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (the job's traceback goes to its own log, as a child process would print it)
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        for sig in (signal.SIGTERM, signal.SIGUSR1):  # a job's handlers (train.py's preemption flag) end with the job
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sys.argv, sys.path[:] = old_argv, old_path
        os.chdir(root)
    return code


def settle() -> float:
    """Between jobs (and after the warm-up): collect the finished job's garbage (its model and optimizer in reference
    cycles, CUDA memory included) and freeze what survives, so the next job's automatic full collections skip the
    imported stack. Without it a ~0.27 s gen-2 collection fell inside the next training job's first step (ConvNeXt-T
    on an H200: step 1 took 0.15-0.40 s instead of 0.05 s). Returns the seconds it took."""
    t = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.enable()  # every job starts with the collector on, whatever the last one did
    return round(time.perf_counter() - t, 3)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--requests"] and len(argv) == 2:  # a FIFO (the Docker runner: the output dir is mounted)
        control = open(argv[1], "r")
    else:
        control = os.fdopen(os.dup(0), "r")  # requests come on the original stdin; jobs get /dev/null as theirs
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for line in control:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        if req.get("op") == "prewarm":
            info = prewarm()
            info["gc_s"] = settle()
            print(json.dumps({"prewarm": info}), flush=True)
            continue
        started = time.time()
        code = run_job(req)
        print(json.dumps({"job": req.get("kind"), "exit_code": code, "seconds": round(time.time() - started, 2)}), flush=True)
        _write_atomic(req["exit"], str(code))
        if code != 0:
            return 0  # state after a failure is not trusted: the next job gets a fresh interpreter
        settle()  # while the agent reads this job's result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
