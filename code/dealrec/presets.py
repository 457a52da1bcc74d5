"""Named presets: each is a set of overrides of named settings (dotted names of the
configuration dataclasses, or their flat aliases: :mod:`dealrec.config`), applied before the
command line's own options.

- :data:`PRUNE_PRESETS` (``prune.py --preset``, ``prune.sh … --preset demo``);
- :data:`FINETUNE_PRESETS` (``finetune.sh <data> --preset cpu-demo``: one entry per script of
  the chain — ``gen_fewshot``, ``finetune``, ``inference``, ``evaluate``);
- :data:`STUDY_PRESETS` (``bench/reproduce.py --preset cpu|gpu|full|microlens|dcrec``).
"""

from __future__ import annotations

from typing import Any

Preset = dict[str, Any]

# Every registered strategy in the study's order (DEALRec, random, the ablations, the baselines).
DEFAULT_STRATEGIES = ("dealrec", "random", "influence", "effort", "greedy", "el2n", "grand", "ccs")

# The `full` preset's: DEALRec, its seed-stable variant, random, the three ablations.
FULL_STRATEGIES = ("dealrec", "dealrec-stable", "random", "influence", "effort", "greedy")

PRUNE_PRESETS: dict[str, Preset] = {
    # `make demo`: the first 600 users, n = 64, a short surrogate run and LiSSA, 256-token prompts.
    "demo": {"max_users": 600, "select.n_fewshot": 64, "surrogate.train.epochs": 20, "surrogate.train.eval_every": 5,
             "influence.recursion_depth": 1000, "effort.cutoff_len": 256},
}

# The response-only loss with a high learning rate: the study found that with the paper's
# whole-prompt loss at 3e-4 a few steps leave the 135M model echoing its input (296 of 300
# generations identical across two different selections), so every selection scores the same.
_CPU_DEMO_TUNE: Preset = {"batch_size": 4, "micro_batch_size": 4, "max_steps": 8, "eval_steps": 4, "cutoff_len": 256,
                          "val_set_size": 8, "warmup_steps": 2, "learning_rate": 2e-3, "train_on_inputs": False,
                          "logging_steps": 1}
FINETUNE_PRESETS: dict[str, dict[str, Preset]] = {
    # finetune.sh's CPU demo (minutes on 2 cores): 8 LoRA steps, 50 test users, 2 beams, 24 new
    # tokens, grounding among the first 1,000 items + the targets (labelled in the metrics).
    "cpu-demo": {
        "gen_fewshot": {"cutoff_len": 256, "max_test_users": 50},
        "finetune": _CPU_DEMO_TUNE,
        "inference": {"num_beams": 2, "max_new_tokens": 24, "batch_size": 4, "cutoff_len": 256, "max_test_users": 50},
        "evaluate": {"max_items": 1000},
    },
}


def finetune_preset(script: str) -> dict[str, Preset]:
    """The presets of one script of the fine-tuning chain: {preset name: overrides}."""
    return {name: p.get(script, {}) for name, p in FINETUNE_PRESETS.items()}


STUDY_PRESETS: dict[str, Preset] = {
    # ~90 min on 2 CPU cores with the embedded SmolLM2-135M: pruning among the first 1,000 users,
    # n = 128, 300 fixed test users, greedy 24-token generations, two LoRA epochs (32 steps).
    # The loss is on the response only, with a high learning rate: with the paper's whole-prompt
    # loss, 16 steps at 3e-4 left the model echoing its input (296 of 300 generations identical
    # across two different selections), so every strategy would have scored the same.
    "cpu": {
        "prune.select.n_fewshot": 128, "strategies": ("dealrec", "random", "influence", "greedy"), "seeds": (0, 1),
        "prune.max_users": 1000, "test_users": 300, "cutoff_len": 256, "finetune.batch_size": 8,
        "finetune.micro_batch_size": 4, "finetune.num_epochs": 2.0, "finetune.learning_rate": 2e-3,
        "finetune.warmup_steps": 2, "finetune.train_on_inputs": False, "finetune.val_set_size": 8,
        "finetune.eval_steps": 8, "generate.num_beams": 1, "generate.max_new_tokens": 24, "generate.batch_size": 8,
    },
    # The paper's scale: all users are candidates, n = 1024, every test user, 4 beams, 3 seeds.
    "gpu": {
        "prune.select.n_fewshot": 1024, "strategies": DEFAULT_STRATEGIES, "seeds": (0, 1, 2), "prune.max_users": None,
        "test_users": None, "cutoff_len": 512, "finetune.batch_size": 128, "finetune.micro_batch_size": 32,
        "finetune.num_epochs": 5.0, "finetune.learning_rate": 3e-4, "finetune.warmup_steps": 5,
        "finetune.train_on_inputs": True, "finetune.val_set_size": None, "finetune.eval_steps": 8,
        "generate.num_beams": 4, "generate.max_new_tokens": 64, "generate.batch_size": 64,
    },
    # The study at the paper's scale with paired statistics: every Games user is a
    # candidate, n = 1024, DEALRec and its seed-stable variant against random and the ablations.
    # SASRec (cheap) on all test users with 5 seeds; the LLM on 2,000 fixed test users with 3
    # seeds, with the cpu preset's LoRA recipe (response-only loss, lr 2e-3, 2 epochs of batches
    # of 8: the recipe that made the embedded 135M model's generations differ between
    # selections) and greedy 24-token generations; prompts of up to 512 tokens everywhere (the
    # pruning CLI's effort default, so effort scores computed by prune.py can be reused). LoRA
    # runs under bf16 autocast where the CPU has native bf16 (1.7x, loss within seed noise; fp32
    # elsewhere, and the run's key says which ran); greedy batches of 32 (the fastest measured on
    # 2 cores, records/bench/gen_greedy_batches.json). TIGER (the paper's second backend, Table 2)
    # trained on the selection and scored on every test user, with 10 seeds.
    "full": {
        "prune.select.n_fewshot": 1024, "strategies": FULL_STRATEGIES, "seeds": (0, 1, 2),
        "sasrec_seeds": (0, 1, 2, 3, 4), "reference_seeds": (0,), "prune.max_users": None, "test_users": 2000, "test_seed": 0,
        "cutoff_len": 512, "finetune.batch_size": 8, "finetune.micro_batch_size": 4, "finetune.num_epochs": 2.0,
        "finetune.learning_rate": 2e-3, "finetune.warmup_steps": 4, "finetune.train_on_inputs": False,
        "finetune.val_set_size": 32, "finetune.eval_steps": 64, "finetune.precision": "auto",
        "generate.num_beams": 1, "generate.max_new_tokens": 24, "generate.batch_size": 32,
        "signals": ("llm", "sasrec", "tiger"), "tiger_seeds": tuple(range(10)),
    },
}
# MicroLens-50K with the paper's settings for it (λ 1.0, k 50) and the full preset's signals and
# recipe; the LLM and TIGER run DEALRec, its seed-stable variant and random only (a TIGER run
# decodes 20,748 test users here, 2.4 times Games' 8,696), SASRec every strategy.
STUDY_PRESETS["microlens"] = {
    **STUDY_PRESETS["full"], "data_name": "microlens-50k", "prune.select.lamda": 1.0, "prune.select.k": 50,
    "llm_strategies": ("dealrec", "dealrec-stable", "random"),
    "tiger_strategies": ("dealrec", "dealrec-stable", "random"),
}
# DCRec as the surrogate (paper Table 4's question on the cheap signal): DEALRec with DCRec's
# influence scores, random and the influence-only ablation on the `full` preset's SASRec signal
# (all 8,696 test users, 5 seeds), paired with random per test user; the LLM signal is planned
# for DCRec-DEALRec only (3 seeds), to be run where the SASRec signal shows a difference. No
# full-data row: it does not depend on the surrogate (the `full` preset's is the same run). Its
# own output folder: run folders are named by strategy and seed, so `full`'s would be shared.
STUDY_PRESETS["dcrec"] = {
    **STUDY_PRESETS["full"], "prune.surrogate.name": "DCRec", "out_dir": "results/games_1024_dcrec",
    "strategies": ("dealrec", "random", "influence"), "llm_strategies": ("dealrec",), "signals": ("sasrec",),
    "reference_seeds": (),
}
