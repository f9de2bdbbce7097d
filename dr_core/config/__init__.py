"""Settings: every section of ``params.yaml`` as a frozen, validated dataclass (``params``), and presets."""
from dr_core.config.params import (FELLOW_EYE_SCOPES, GRADE_NAMES, METRIC_KEYS, ConfigError, CVConfig, DataConfig,
                                   DemoConfig, InputError, EvaluateConfig, ExportConfig, ModelConfig, Params, PreprocessConfig,
                                   SourceConfig, SplitConfig, StageParams, TrainConfig, UndeclaredParamError,
                                   fold_params, load_params, params_from_dict)

__all__ = ["FELLOW_EYE_SCOPES", "GRADE_NAMES", "METRIC_KEYS", "ConfigError", "CVConfig", "DataConfig", "DemoConfig",
           "InputError", "EvaluateConfig", "ExportConfig", "ModelConfig", "Params", "PreprocessConfig", "SourceConfig",
           "SplitConfig", "TrainConfig",
           "StageParams", "UndeclaredParamError", "fold_params", "load_params", "params_from_dict"]
