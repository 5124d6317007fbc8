"""Student training and evaluation, seen from the service side: runs recorded in the database,
the `training/` programs started as child processes (the DeepSpeed launcher, the evaluator),
their progress streamed back into the database. Nothing here imports torch: the training stack
lives in `training/` alone and is reached through its command lines."""

# The evaluation sets `kpdd eval` uses by default: the usual four of the KPDD paper.
DEFAULT_EVAL_DATASETS = ("gsm8k-test", "svamp", "asdiv", "multiarith")
