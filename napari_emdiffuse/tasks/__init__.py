"""The tasks beyond denoising: 2D super-resolution (:mod:`.superres`) and isotropic
reconstruction of anisotropic volumes (:mod:`.isotropic`): their training data, their baselines
and their inference on top of the tiled restore core."""
