"""Test helpers for component authors: conformance kits, the Gaussian toy and a stub model.

::

    from elfkit.testing import check_sampler

    def test_my_sampler():
        check_sampler(MySampler)
"""

from elfkit.testing._build import ConformanceError
from elfkit.testing.embedder_kit import check_embedder
from elfkit.testing.guidance_kit import check_guidance
from elfkit.testing.sampler_kit import check_sampler
from elfkit.testing.stubs import RunnerCall, StubRunner
from elfkit.testing.toy import GaussianToy

__all__ = ["ConformanceError", "GaussianToy", "RunnerCall", "StubRunner", "check_embedder", "check_guidance",
           "check_sampler"]
