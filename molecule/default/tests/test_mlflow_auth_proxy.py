"""Basic auth (mlflow_auth) and the TLS reverse proxy (mlflow_proxy), checked
from the controller over HTTPS against each container's address, the way a
user reaches the server.

Needs MLFLOW_TEST_ADMIN_PASSWORD (user `admin`) and MLFLOW_TEST_READER_PASSWORD
(user `reader`, default permission READ) in the environment: the passwords the
scenario generated and converged with.
"""
import os
import re
import socket
import ssl
import time
import uuid

import pytest
import requests
import urllib3
from cryptography import x509

from conftest import AUTH_CACHE_TTL

# The proxy serves a self-signed certificate: the checks talk to it without
# verification (the certificate itself is checked separately); TLS 1.0/1.1
# are offered on purpose to see the server refuse them.
pytestmark = [
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning"),
]

ADMIN = "admin"
READER = "reader"
SITE = "/etc/nginx/sites-available/mlflow.conf"
TIMEOUT = 60


def _secret(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: the scenario must export the password it converged with")
    return value


@pytest.fixture(scope="module")
def admin_password() -> str:
    return _secret("MLFLOW_TEST_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def reader_password() -> str:
    return _secret("MLFLOW_TEST_READER_PASSWORD")


@pytest.fixture
def public_name(host) -> str:
    """First server_name of the site: a name MLflow's --allowed-hosts must accept."""
    match = re.search(r"^\s*server_name\s+([^\s;]+)", host.file(SITE).content_string, re.M)
    assert match, f"no server_name in {SITE}"
    return match.group(1)


@pytest.fixture
def api(host_ip, public_name):
    """requests against https://<container-ip>/ with the public name as Host."""
    base = f"https://{host_ip}"

    def call(method, path, auth=None, host_header=None, **kwargs):
        headers = {"Host": host_header or public_name}
        headers.update(kwargs.pop("headers", {}))
        return requests.request(method, base + path, auth=auth, headers=headers,
                                verify=False, timeout=TIMEOUT, allow_redirects=False, **kwargs)
    return call


# --- files on the host --------------------------------------------------------------
def test_auth_ini_is_private_to_mlflow(host):
    ini = host.file("/etc/mlflow/basic_auth.ini")
    assert ini.is_file
    # Root's, readable by the service group only: the server cannot rewrite it.
    assert (ini.user, ini.group, ini.mode) == ("root", "mlflow", 0o640)
    content = ini.content_string
    assert re.search(r"^database_uri = sqlite:////", content, re.M)
    # The scenario's setting, not the role's default, is in effect.
    assert re.search(rf"^auth_cache_ttl_seconds = {AUTH_CACHE_TTL}$", content, re.M)


def test_tls_private_key_is_root_only(host):
    key = host.file("/etc/ssl/mlflow/mlflow.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


def test_nginx_running_and_default_site_gone(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.run("nginx -t").rc == 0


# --- authentication through the proxy -----------------------------------------------
def test_health_needs_no_credentials(api):
    response = api("GET", "/health")
    assert response.status_code == 200
    assert response.text.strip() == "OK"


def test_no_credentials_is_401(api):
    assert api("GET", "/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401


def test_wrong_password_is_401(api):
    response = api("GET", "/api/2.0/mlflow/experiments/search?max_results=1",
                   auth=(ADMIN, "wrong-" + uuid.uuid4().hex))
    assert response.status_code == 401


def test_admin_is_authenticated(api, admin_password):
    response = api("GET", f"/api/2.0/mlflow/users/get?username={ADMIN}", auth=(ADMIN, admin_password))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["is_admin"] is True


def test_reader_reads_but_cannot_write(api, admin_password, reader_password):
    response = api("GET", f"/api/2.0/mlflow/users/get?username={READER}", auth=(READER, reader_password))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["is_admin"] is False

    name = f"h2-check-{uuid.uuid4().hex[:12]}"
    created = api("POST", "/api/2.0/mlflow/experiments/create", auth=(ADMIN, admin_password), json={"name": name})
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    try:
        read = api("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                   auth=(READER, reader_password))
        assert read.status_code == 200, read.text
        write = api("POST", "/api/2.0/mlflow/runs/create", auth=(READER, reader_password),
                    json={"experiment_id": experiment_id})
        assert write.status_code == 403, write.text
    finally:
        api("POST", "/api/2.0/mlflow/experiments/delete", auth=(ADMIN, admin_password),
            json={"experiment_id": experiment_id})


# --- Host and forwarding headers ---------------------------------------------------------
def test_public_name_host_is_accepted(api, admin_password):
    response = api("GET", "/api/2.0/mlflow/experiments/search?max_results=1", auth=(ADMIN, admin_password))
    assert response.status_code == 200, response.text


def test_unknown_host_is_rejected_by_mlflow(api, admin_password):
    # nginx passes the Host header on unchanged; MLflow's --allowed-hosts
    # check refuses a name it does not know.
    response = api("GET", "/api/2.0/mlflow/experiments/search?max_results=1", auth=(ADMIN, admin_password),
                   host_header=f"h2-{uuid.uuid4().hex[:8]}.invalid")
    assert response.status_code == 403
    assert "host" in response.text.lower()


def test_proxy_sets_forwarding_headers(host):
    site = host.file(SITE).content_string
    for header, value in (("Host", "$host"), ("X-Real-IP", "$remote_addr"),
                          ("X-Forwarded-For", "$remote_addr"), ("X-Forwarded-Proto", "$scheme")):
        assert re.search(rf"^\s*proxy_set_header {re.escape(header)} {re.escape(value)};", site, re.M), header


def test_mlflow_sees_the_client_address(host, api):
    # uvicorn trusts X-Forwarded-For from the loopback proxy: MLflow's access
    # log then shows the controller's address, not nginx's 127.0.0.1.
    marker = uuid.uuid4().hex
    assert api("GET", f"/api/2.0/mlflow/experiments/search?max_results=1&probe={marker}").status_code == 401
    for _ in range(20):
        lines = host.run(f"journalctl -u mlflow.service --no-pager -o cat -g {marker}").stdout.strip()
        if lines:
            break
        time.sleep(1)
    assert lines, "the request did not reach MLflow's access log"
    client = re.search(r"INFO:\s+(\S+):\d+ - ", lines)
    assert client and not client.group(1).startswith("127."), lines


# --- HTTP and TLS ---------------------------------------------------------------------
def test_http_redirects_to_https(host_ip, public_name):
    response = requests.get(f"http://{host_ip}/some/path?x=1", headers={"Host": public_name},
                            timeout=TIMEOUT, allow_redirects=False)
    assert response.status_code in (301, 308)
    assert response.headers["Location"] == f"https://{public_name}/some/path?x=1"


def test_https_sends_hsts_and_hides_version(api):
    response = api("GET", "/health")
    assert "max-age=" in response.headers.get("Strict-Transport-Security", "")
    assert response.headers.get("Server") == "nginx"


def _handshake(host_ip: str, version: ssl.TLSVersion) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Let this client offer old versions, so a refusal is the server's.
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    with socket.create_connection((host_ip, 443), timeout=TIMEOUT) as sock:
        with context.wrap_socket(sock) as tls:
            return tls.version()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_accepted(host_ip, version):
    assert _handshake(host_ip, version) == version.name.replace("_", ".")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_refused(host_ip, version):
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(host_ip, version)
    # The server's alert, not a client that cannot speak the version.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper()


def test_certificate_names_the_host(host_ip, public_name):
    pem = ssl.get_server_certificate((host_ip, 443), timeout=TIMEOUT)
    san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName) + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert host_ip in names
    assert public_name in names
