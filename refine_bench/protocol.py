"""The protocol's vocabulary, written once: phases and their arms, task groups, the LongBench table, the
paper's evaluation lengths and the test-time-training batch.

Every layer (train, eval, report, cli) imports these names from here; nothing else spells them out.
"""

from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------------------ phases, arms

# The paper's training stages, in the order a model goes through them. A run record lists the arm of each.
STAGES = ("mid", "post", "ttt")
# Arms per stage: `sft` is next-token prediction; the post-training arms are the paper's "nested" variants.
STAGE_ARMS: dict[str, tuple[str, ...]] = {
    "mid": ("sft", "refine"),
    "post": ("sft", "nested_sft", "nested_refine"),
    "ttt": ("sft", "refine"),
}
# Pretraining from scratch is not a paper stage: it makes the small base models the harness ships.
PRETRAIN = "pretrain"
PRETRAIN_ARMS = ("sft",)
# Phases the trainer runs itself (`ttt` runs inside evaluation).
TRAIN_PHASES = (PRETRAIN, "mid", "post")
PHASE_ARMS: dict[str, tuple[str, ...]] = {PRETRAIN: PRETRAIN_ARMS, **STAGE_ARMS}
# Arms whose objective includes REFINE's GRPO term on rollouts.
REFINE_ARMS = ("refine", "nested_refine")
BASE_ARM = "base"  # no training at all
# `refine-bench run` trains the mid-training stage with one of these (or none, `base`).
RUN_ARMS = (BASE_ARM, *STAGE_ARMS["mid"])
TTT_ARMS = STAGE_ARMS["ttt"]
# How the paper's tables print each arm, in the order its rows list them.
ARM_LABELS = {BASE_ARM: "base", "sft": "SFT", "nested_sft": "nested SFT", "refine": "REFINE",
              "nested_refine": "nested REFINE"}
TTT_BATCH_SIZE = 8  # the paper's test-time-training batch (Table 2)

# ------------------------------------------------------------------------------------------------ tasks

TASK_GROUPS = ("niah", "ruler_qa", "longbench")  # the paper's evaluation groups (scores in [0, 1])
PAPER_GROUP = "refine_paper"  # all three groups
PAPER_LENGTHS = (4096, 8192, 16384)  # context lengths the paper reports for NIAH and RULER QA
# The metric each group's tidy score rows carry (NIAH recall; RULER QA and LongBench a score in [0, 1]).
GROUP_METRICS = {"niah": "recall", "ruler_qa": "score", "longbench": "score"}

NIAH_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3",
    "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery",
)
# Table 3's columns: task families (name prefixes) and their labels.
NIAH_FAMILIES = (("niah_single", "S-NIAH"), ("niah_multikey", "MK-NIAH"), ("niah_multiquery", "MQ-NIAH"),
                 ("niah_multivalue", "MV-NIAH"))

RULER_QA_DATASETS = ("squad", "hotpotqa")
RULER_QA_TASKS = tuple(f"ruler_qa_{d}" for d in RULER_QA_DATASETS)
RULER_QA_LABELS = {"ruler_qa_squad": "SQuAD", "ruler_qa_hotpotqa": "HotpotQA"}
RULER_QA_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class LongBenchTask:
    """One LongBench task as the paper reports it: column label, dataset name, generation budget, metric."""

    label: str
    name: str
    max_new_tokens: int
    metric: str  # qa_f1 | rouge_l | classification | code_similarity

    @property
    def task(self) -> str:
        """The lm-eval task name."""
        return f"longbench_{self.name}"


# Table 5's columns, in the paper's order; budgets are LongBench's dataset2maxlen.
LONGBENCH = (
    LongBenchTask("NQ", "narrativeqa", 128, "qa_f1"),
    LongBenchTask("QR", "qasper", 128, "qa_f1"),
    LongBenchTask("MF", "multifieldqa_en", 64, "qa_f1"),
    LongBenchTask("HP", "hotpotqa", 32, "qa_f1"),
    LongBenchTask("2W", "2wikimqa", 32, "qa_f1"),
    LongBenchTask("QM", "qmsum", 512, "rouge_l"),
    LongBenchTask("MN", "multi_news", 512, "rouge_l"),
    LongBenchTask("SS", "samsum", 128, "rouge_l"),
    LongBenchTask("TC", "trec", 64, "classification"),
    LongBenchTask("TQ", "triviaqa", 32, "qa_f1"),
    LongBenchTask("LC", "lcc", 64, "code_similarity"),
    LongBenchTask("RP", "repobench-p", 64, "code_similarity"),
)
LONGBENCH_BY_NAME = {t.name: t for t in LONGBENCH}

# The paper's short-context sanity suite (Table E.1): lm-eval's built-in tasks, group `sanity` in tasks/.
SANITY_TASKS = ("wikitext", "lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                "swde", "fda")

TASKS_BY_GROUP: dict[str, tuple[str, ...]] = {
    "niah": NIAH_TASKS,
    "ruler_qa": RULER_QA_TASKS,
    "longbench": tuple(t.task for t in LONGBENCH),
}


def group_of(task: str) -> str | None:
    """The paper group a task belongs to (by name), or None for any other lm-eval task."""
    for group, tasks in TASKS_BY_GROUP.items():
        if task in tasks or task.startswith(f"{group}_"):
            return group
    return None
