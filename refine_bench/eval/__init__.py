"""Evaluation through lm-eval: the tasks' data and scorers, the `refine-bench` lm-eval model, and the runner.

Importing this package is cheap. Importing `refine_bench.eval.lm` registers the `refine-bench` model with lm-eval
(`python -m refine_bench.lm_eval` does it for lm-eval's own CLI); `refine_bench.eval.runner.run_eval` is what
`refine-bench eval` calls.
"""
