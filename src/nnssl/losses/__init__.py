"""Loss functions of the pre-training methods (reconstruction, ...); each cites its paper and formula."""
