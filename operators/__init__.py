"""Airflow operators for the Cirrus workflow: thin layers that turn task arguments into
``cirrus_airflow`` library calls."""

from operators.generate import CirrusSyntheticDataOperator
from operators.preprocess import CirrusPreprocessOperator
from operators.train import CirrusTrainOperator
from operators.tune import CirrusTuneOperator

__all__ = ["CirrusPreprocessOperator", "CirrusSyntheticDataOperator", "CirrusTrainOperator", "CirrusTuneOperator"]
