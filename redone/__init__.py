"""redone: the RedOne recipe (CPT -> multi-task SFT -> DPO) for SNS domain models."""

__version__ = "0.1.0"
