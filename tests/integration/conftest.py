import shutil

import pytest

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")


@pytest.fixture(scope="session")
def nginx() -> str:
    """The system nginx with the njs module: fail loudly when it is missing, never skip."""
    if NGINX is None:
        pytest.fail("nginx is not installed (apt-get install nginx libnginx-mod-http-js)", pytrace=False)
    return NGINX
