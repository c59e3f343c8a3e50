"""medflow: DICOM to volumes, masks, IBSI features, predictions and a decision-support report."""

__version__ = "0.1.0"
