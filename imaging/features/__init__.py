"""IBSI-1 radiomics feature extraction (pure functions of arrays).

Entry point :func:`extract_features`; settings :class:`FeatureSettings` and the
named presets :data:`PRESETS` (``ibsi-digital-phantom``, ``ibsi-config-a`` ...
``ibsi-config-e``). Definitions follow the IBSI reference manual
(Zwanenburg et al., arXiv:1612.07003; Radiology 2020;295:328-338).
"""

from imaging.features.codes import AGGREGATION_CODES, FEATURE_CODES, ibsi_code
from imaging.features.extract import (
    COLUMNS,
    PreparedRoi,
    extract_features,
    extract_prepared,
    is_close_ibsi,
    prepare_roi,
)
from imaging.features.settings import PRESETS, FeatureSettings

__all__ = [
    "AGGREGATION_CODES", "COLUMNS", "FEATURE_CODES", "PRESETS", "FeatureSettings", "PreparedRoi",
    "extract_features", "extract_prepared", "ibsi_code", "is_close_ibsi", "prepare_roi",
]
