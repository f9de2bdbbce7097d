"""timm backbones with offline weights (``backbone``), output heads (``heads``) and self-describing
checkpoints (``checkpoint``)."""
