"""Speed levers that must not change a result: work the engine skips."""
import numpy as np

from test_tiling import tiny_model

from napari_emdiffuse.restore import restore


def test_one_sample_with_the_posterior_mean_evaluates_only_the_first_level():
    """Its later steps would only refine a sample nobody reads: skipped, the result unchanged."""
    model = tiny_model()
    image = (np.random.default_rng(9).random((40, 56)) * 255).astype(np.float32)
    progress = []
    fast = restore(image, model, tile=32, overlap=8, samples=1, steps=4, estimate="posterior_mean",
                   progress=lambda d, t: progress.append((d, t)))
    assert fast.info["evaluations"] == 1 and fast.info["steps"] == 1 and fast.std is None
    assert progress[-1][0] == progress[-1][1]  # the progress total counts what is run
    # the first level is the same whatever the step count: so is the estimate and its variance
    one = restore(image, model, tile=32, overlap=8, samples=1, steps=1, estimate="posterior_mean")
    np.testing.assert_array_equal(fast.mean, one.mean)
    np.testing.assert_array_equal(fast.aleatoric, one.aleatoric)
    # two samples are sampled to the end for their spread
    two = restore(image, model, tile=32, overlap=8, samples=2, steps=4, estimate="posterior_mean")
    assert two.info["evaluations"] == 4 and two.std is not None
    # the sample mean still runs every step
    assert restore(image, model, tile=32, overlap=8, samples=1, steps=3).info["evaluations"] == 3
