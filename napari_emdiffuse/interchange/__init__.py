"""Moving models to other tools: export to the BioImage Model Zoo format (``bioimageio_export``),
whose network is the single-pass posterior-mean estimate (``posterior_mean``)."""
