"""``python -m genlora_pl tune``: Optuna studies over a config's settings (:mod:`genlora_pl.tune.cli`)."""
