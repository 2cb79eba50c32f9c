"""The evaluation task names, importable without torch (the config validates against them)."""

ZERO_SHOT = ("blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps", "reading")
# Scored over a run's series of BabyLM-mark checkpoints, not one checkpoint: one job per mark, one fit.
SERIES = ("aoa",)
FINETUNE = ("boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli")
TASKS = ZERO_SHOT + SERIES + FINETUNE
