"""The evaluation runner: plan -> build the lm-eval model -> evaluate with lm-eval -> write the run record.

`run_eval(model, tasks, **options)` takes `EvalRequest`'s fields as keywords; `evaluate(request)` runs one
request. Each step is its own function: `plan.make_plan` (checks and settles the request), `build_lm`,
`open_answer_cache` (resuming), `run_lm_eval`, `record.write_record`. Only rank 0 writes the record and gets
its folder back.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.eval import data
from refine_bench.eval.answer_cache import AnswerCache, files_fingerprint
from refine_bench.eval.plan import EvalPlan, EvalRequest, make_plan
from refine_bench.eval.quiet import quiet_lm_eval
from refine_bench.eval.record import data_file_rows, write_record
from refine_bench.protocol import TASK_GROUPS

log = logging.getLogger(__name__)

ANSWER_CACHE_DIR = ".eval-cache"  # inside the output folder; hidden, so run listings skip it


def run_eval(model: str, tasks: Sequence[str] = (",".join(TASK_GROUPS),), **options: Any) -> Path | None:
    """Evaluate `model` on `tasks` (options: the fields of `EvalRequest`); returns the run folder on rank 0."""
    return evaluate(EvalRequest(model=model, tasks=tasks, **options))


def build_lm(request: EvalRequest, plan: EvalPlan) -> Any:
    """The lm-eval model for the request: `refine-bench`, or its test-time-training wrapper."""
    kwargs = dict(pretrained=request.model, checkpoint=request.checkpoint, batch_size=request.batch_size,
                  device=request.device, dtype=request.dtype, max_length=plan.max_length, seed=0)
    if request.ttt is not None:
        from refine_bench.eval.test_time_training_lm import TestTimeTrainingLM

        return TestTimeTrainingLM(request.ttt.adapter, request.ttt.arm, ttt_batch_size=request.ttt.batch_size,
                                  settings=request.ttt.settings, **kwargs)
    from refine_bench.eval.lm import RefineBenchLM

    return RefineBenchLM(**kwargs)


def weights_hashes(request: EvalRequest) -> dict[str, str | None]:
    """The SHA-256 of the weights `--model` and `--checkpoint` name (None: a seeded random init, no checkpoint, or
    a model object passed in by the caller, whose name need not resolve)."""
    from refine_bench.models.zoo import model_weights_sha256

    if request.lm is not None:
        return {"model_weights_sha256": None, "checkpoint_weights_sha256": None}
    return {"model_weights_sha256": model_weights_sha256(request.model),
            "checkpoint_weights_sha256": model_weights_sha256(request.checkpoint) if request.checkpoint else None}


def answer_identity(request: EvalRequest, lm: Any, weights: dict[str, str | None]) -> dict[str, Any]:
    """Everything besides the request itself that decides an answer (see `answer_cache`)."""
    from refine_bench.records import git_sha, package_versions

    return {
        "model": files_fingerprint(request.model), "checkpoint": files_fingerprint(request.checkpoint), **weights,
        "seed": 0, "dtype": str(next(lm.model.parameters()).dtype), "device": lm.device.type,
        "max_length": lm.max_length, "batch_size": request.batch_size, "prefill_chunk": lm.prefill_chunk,
        "ttt": lm.ttt_settings() if hasattr(lm, "ttt_settings") else None,
        "git_sha": git_sha(), "versions": package_versions(),
    }


def open_answer_cache(request: EvalRequest, lm: Any, weights: dict[str, str | None]) -> AnswerCache:
    """Attach the answer cache of this identity to `lm` (emptied first without `resume`)."""
    root = Path(request.output) / ANSWER_CACHE_DIR
    identity = answer_identity(request, lm, weights)
    if not request.resume and lm.rank == 0:
        shutil.rmtree(AnswerCache.folder_of(root, identity), ignore_errors=True)
    lm.barrier()
    cache = AnswerCache(root, identity, rank=lm.rank)
    lm.use_answer_cache(cache)
    if len(cache) and lm.rank == 0:
        log.warning("resuming: %d answer(s) of an earlier run with the same model and settings are in %s",
                    len(cache), cache.folder)
    return cache


def run_lm_eval(lm: Any, plan: EvalPlan, seed: int) -> dict[str, Any]:
    """lm-eval's simple_evaluate on the plan's tasks (samples logged, seeds fixed)."""
    from lm_eval import simple_evaluate

    try:
        return simple_evaluate(
            model=lm, tasks=plan.tasks, task_manager=plan.task_manager, samples=plan.samples, log_samples=True,
            bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ConnectionError as exc:
        raise UserInputError(
            f"a task's data could not be fetched ({exc}); lm-eval's built-in tasks (e.g. the sanity suite) "
            "need the Hugging Face hub or a populated HF datasets cache"
        ) from exc
    except ImportError as exc:
        raise UserInputError(f"an lm-eval task needs a package that is not installed ({exc})") from exc


def _resume_summary(lm: Any, cache: AnswerCache | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    import torch

    counts = lm.dist.all_reduce_sum(torch.tensor([cache.reused, cache.computed], dtype=torch.long))
    return {"folder": str(cache.folder), "reused": int(counts[0]), "computed": int(counts[1])}


def evaluate(request: EvalRequest) -> Path | None:
    """Run one evaluation request (see the module docstring); returns the run folder on rank 0, else None."""
    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.records import utc_now

    quiet_lm_eval()
    started = utc_now().isoformat()
    with data.recording() as files_read:
        plan = make_plan(request)
        lm = request.lm if request.lm is not None else build_lm(request, plan)
        weights = weights_hashes(request)
        cache = open_answer_cache(request, lm, weights) if isinstance(lm, RefineBenchLM) else None
        results = run_lm_eval(lm, plan, request.seed)
    resume = _resume_summary(lm, cache)
    if lm.rank != 0:
        return None
    if getattr(lm, "truncated_prompts", 0):
        log.warning("%d prompt(s) were truncated in the middle to fit --max-length %d", lm.truncated_prompts,
                    lm.max_length)
    config = {
        "tasks": plan.tasks, "leaf_tasks": plan.leaves, "lengths": plan.lengths, "limit": request.limit,
        "batch_size": request.batch_size, "device": str(lm.device), "dtype": request.dtype,
        "max_length": lm.max_length, "checkpoint": request.checkpoint,
        **weights,
        "data_dir": str(plan.data_dir) if plan.data_dir else None, "include_path": plan.include_path,
        "world_size": lm.world_size, "scoring": request.scoring,
        "niah_length_convention": request.niah_length_convention,
        "ruler_qa_files": plan.metadata.get("ruler_qa_paths"), "longbench_files": plan.metadata.get("longbench_paths"),
        "allow_foreign_ruler_file": request.allow_foreign_ruler_file,
        "data_files": data_file_rows(sorted(files_read)), "resume": resume, "variant": plan.variant or None,
    }
    if hasattr(lm, "ttt_settings"):
        config["ttt"] = lm.ttt_settings()
    return write_record(Path(request.output), model=request.model, stages=plan.stages, config=config,
                        seed=request.seed, command=request.command if request.command is not None else list(sys.argv),
                        started=started, results=results, ttt_log=list(getattr(lm, "ttt_log", [])))
