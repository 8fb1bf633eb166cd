"""Hyperparameter search: the space of configurations and the rules that stop hopeless ones early."""
