import os

import pytest

from harness import Image


@pytest.fixture(scope="session")
def image():
    """The built image (dist/image/tiercache.oci.tar), unpacked once for runc."""
    if os.geteuid() != 0:
        pytest.fail("the image checks run the image with runc, which needs root")
    img = Image.unpack()
    yield img
    img.cleanup()
