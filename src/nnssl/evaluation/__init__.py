"""Using and measuring frozen encoders: feature extraction, probes, evaluation during pre-training.

See documentation/evaluation.md. Modules: :mod:`.encoder` (a frozen encoder from any checkpoint's adaptation plan),
:mod:`.images` (preprocessing as the plan says, world geometry), :mod:`.sliding_window` (dense features of whole
volumes), :mod:`.pca` (one basis over several images), :mod:`.eval_set` (the labelled evaluation-set JSON),
:mod:`.probes` (dense linear probe, linear and kNN classification), :mod:`.api` (the two jobs end to end) and
:mod:`.during_training` (the engine's periodic evaluation).
"""
