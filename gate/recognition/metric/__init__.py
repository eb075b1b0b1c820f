"""Deep-metric-learning building blocks: losses, identity-balanced sampling, camera augmentation."""
