"""The one inference engine every task runs through: an already-loaded model, the public
:class:`SamplingOptions` and an input in; the shared skeleton (normalise, plan tiles, sample,
ensemble, uncertainty, assemble) once for every task (:mod:`.skeleton`); sampling options
(:class:`~napari_emdiffuse.requests.SamplingOptions`) are resolved against the model card
(:mod:`.options`) and each unit is sampled by the tiled sampler (:mod:`.sampling`)."""
from .options import Settings
from .skeleton import fit_normalizer, restore_whole, run

__all__ = ["Settings", "fit_normalizer", "restore_whole", "run"]
