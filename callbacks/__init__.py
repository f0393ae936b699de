"""Lightning callbacks of impress-lightning (installed as the top-level ``callbacks`` package)."""
