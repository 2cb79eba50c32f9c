"""The evaluation task names, importable without torch (the config validates against them)."""

ZERO_SHOT = ("blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps", "reading")
FINETUNE = ("boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli")
TASKS = ZERO_SHOT + FINETUNE
