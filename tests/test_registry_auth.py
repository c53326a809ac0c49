"""push and pull through registry auth: htpasswd basic auth and bearer tokens from a token
server (scopes for pull, push and cross-repository mount)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from tests.conftest import run_cli
from tests.registry_server import PASSWORD, USER, forwarding_proxy, running_registry

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
CREDS = f"{USER}:{PASSWORD}"


def small_image(tmp_path: Path, tag: str) -> str:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hello").write_text(f"hello {tag}\n")
    layerdiff.commit(root, image=f"img:{tag}")
    return f"img:{tag}"


def test_basic_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = small_image(tmp_path, "basic")
    with running_registry(tmp_path / "reg", "basic") as reg:
        out = run_cli("push", "--tls-verify=false", "--progress=none", image, reg.ref("b/img:1"))
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert "credentials" in out.stderr
        with pytest.raises(layerdiff.RegistryAuthError, match="refused the credentials"):
            layerdiff.push(image, reg.ref("b/img:1"), tls_verify=False, creds=f"{USER}:wrong")
        result = layerdiff.push(image, reg.ref("b/img:1"), tls_verify=False, creds=CREDS)
        assert [b.status for b in result.blobs] == ["uploaded", "uploaded"]
        copied = subprocess.run(
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                CREDS,
                reg.ref("b/img:1"),
                f"oci:{tmp_path / 'sk'}:x",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert copied.returncode == 0, copied.stderr
        # Credentials from the docker config ($DOCKER_CONFIG/config.json auths).
        config = tmp_path / "docker"
        config.mkdir()
        auth = base64.b64encode(CREDS.encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        pulled = layerdiff.pull(reg.ref("b/img:1"), "copy:1", tls_verify=False)
        assert pulled.manifest_digest == result.manifest_digest
        out = run_cli("pull", "--tls-verify=false", "--json", reg.ref("b/img:1"), "copy:2")
        assert out.returncode == 0, out.stderr


def test_token_auth_scopes_and_mount(tmp_path: Path) -> None:
    image = small_image(tmp_path, "token")
    with running_registry(tmp_path / "reg", "token") as reg:
        assert reg.token is not None
        with pytest.raises(layerdiff.RegistryAuthError, match="refused anonymous access"):
            layerdiff.push(image, reg.ref("t/one:1"), tls_verify=False)
        first = layerdiff.push(image, reg.ref("t/one:1"), tls_verify=False, creds=CREDS)
        assert [b.status for b in first.blobs] == ["uploaded", "uploaded"]
        reg.token.issued.clear()
        second = layerdiff.push(image, reg.ref("t/two:1"), tls_verify=False, creds=CREDS)
        assert [b.status for b in second.blobs] == ["mounted", "mounted"]
        # The mount needed pull on the source repository besides push on the target.
        assert any(
            "repository:t/one:pull" in scopes and "repository:t/two:pull,push" in scopes
            for scopes in reg.token.issued
        ), reg.token.issued
        pulled = layerdiff.pull(
            reg.ref("t/two:1"), "oci:" + str(tmp_path / "p") + ":1", tls_verify=False, creds=CREDS
        )
        assert pulled.manifest_digest == first.manifest_digest
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--creds", CREDS, reg.ref("t/two:1")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Digest"] == first.manifest_digest
        with pytest.raises(layerdiff.RegistryAuthError, match="refused the credentials"):
            layerdiff.pull(reg.ref("t/two:1"), "x:1", tls_verify=False, creds=f"{USER}:nope")


def test_a_mount_the_registry_refuses_falls_back_to_an_upload(tmp_path: Path) -> None:
    """The store remembers t/one holds the blobs; when pull on t/one is no longer granted, the
    push to t/two uploads them, as docker and skopeo do, instead of failing."""
    image = small_image(tmp_path, "revoked")
    with running_registry(tmp_path / "reg", "token") as reg:
        assert reg.token is not None
        layerdiff.push(image, reg.ref("t/one:1"), tls_verify=False, creds=CREDS)
        reg.token.denied.add("t/one")
        second = layerdiff.push(image, reg.ref("t/two:1"), tls_verify=False, creds=CREDS)
        assert [b.status for b in second.blobs] == ["uploaded", "uploaded"]
        again = run_cli("push", "--tls-verify=false", "--creds", CREDS, image, reg.ref("t/three:1"))
        assert again.returncode == 0, again.stderr
        pulled = layerdiff.pull(
            reg.ref("t/two:1"), f"oci:{tmp_path / 'p'}:1", tls_verify=False, creds=CREDS
        )
        assert pulled.manifest_digest == second.manifest_digest


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
)
def test_docker_hub_credentials_as_docker_login_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """`docker login` keeps Docker Hub's credentials under https://index.docker.io/v1/; every
    spelling of Docker Hub finds them, and another registry's do not answer for it."""
    from layerdiff.registry import Registry, api_host, docker_config_credentials

    auth = base64.b64encode(b"me:pw").decode()
    other = base64.b64encode(b"else:x").decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"quay.io": {"auth": other}, key: {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_credentials("docker.io") == ("me", "pw")
    assert docker_config_credentials("quay.io") == ("else", "x")
    assert docker_config_credentials("ghcr.io") is None
    # Docker Hub's API is served by registry-1.docker.io (docker.io serves web pages).
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"
    reg = Registry("docker.io")
    assert reg.credentials == ("me", "pw")
    reg.close()


def test_tls_verify_false_is_kept_whatever_the_ca_bundle_variables_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry over https with a self-signed certificate: refused by default, with the hint;
    taken with --tls-verify=false, also when REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE name a CA
    bundle (requests lets those override a session's ``verify=False``)."""
    image = small_image(tmp_path, "tls")
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    variables = {"REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle}
    with running_registry(tmp_path / "reg", "tls") as reg:
        refused = run_cli("push", "--progress=none", image, reg.ref("s/img:1"), env=variables)
        assert refused.returncode == 1
        assert "certificate" in refused.stderr and "--tls-verify=false" in refused.stderr
        pushed = run_cli(
            "push", "--progress=none", "--tls-verify=false", image, reg.ref("s/img:1"),
            env=variables,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        pulled = layerdiff.pull(reg.ref("s/img:1"), "back:1", tls_verify=False)
        assert pulled.manifest_digest == layerdiff.inspect(image)["digest"]


def test_a_mount_the_token_server_refuses_falls_back_to_an_upload_and_is_not_asked_again(
    tmp_path: Path,
) -> None:
    """A token server may answer 403 to a scope set that names a repository the user may not
    read, rather than leave that scope out of the token. The mount from it then falls back to
    an upload, and that scope is not asked for again in the session: neither the next blob nor
    the manifest (nor the next push, whose store still names that source) fails for it."""
    image = small_image(tmp_path, "forbidden")
    with running_registry(tmp_path / "reg", "token") as reg:
        assert reg.token is not None
        layerdiff.push(image, reg.ref("t/one:1"), tls_verify=False, creds=CREDS)
        reg.token.forbidden.add("t/one")
        reg.token.asked.clear()
        second = layerdiff.push(image, reg.ref("t/two:1"), tls_verify=False, creds=CREDS, jobs=1)
        assert [b.status for b in second.blobs] == ["uploaded", "uploaded"]
        naming = [scopes for scopes in reg.token.asked if "repository:t/one:pull" in scopes]
        assert len(naming) == 1, reg.token.asked
        again = run_cli("push", "--tls-verify=false", "--creds", CREDS, image, reg.ref("t/three:1"))
        assert again.returncode == 0, again.stderr
        pulled = layerdiff.pull(
            reg.ref("t/three:1"), f"oci:{tmp_path / 'p'}:1", tls_verify=False, creds=CREDS
        )
        assert pulled.manifest_digest == second.manifest_digest


_BASIC = 'Basic realm="Registry Realm"'


def _with_basic(where: str) -> Callable[[str, str, int, list[tuple[str, str]]], Any]:
    """An answer hook that adds a Basic challenge to each 401 of the registry: in a header of
    its own before or after the Bearer one, or in the same header as it."""

    def change(_method: str, _path: str, status: int, headers: list[tuple[str, str]]) -> Any:
        if status != 401:
            return headers
        others = [(k, v) for k, v in headers if k.lower() != "www-authenticate"]
        [bearer] = [v for k, v in headers if k.lower() == "www-authenticate"]
        challenges = {
            "after": [bearer, _BASIC],
            "before": [_BASIC, bearer],
            "one header": [f"{_BASIC}, {bearer}"],
        }[where]
        return others + [("WWW-Authenticate", c) for c in challenges]

    return change


@pytest.mark.parametrize("where", ["after", "before", "one header"])
def test_several_challenges_are_read_each_with_its_own_parameters(
    tmp_path: Path, where: str
) -> None:
    """A registry (behind a proxy that asks for Basic auth too) that offers a Bearer and a
    Basic challenge: the Bearer one is answered, with its own realm, not the Basic one's."""
    image = small_image(tmp_path, "challenges")
    with (
        running_registry(tmp_path / "reg", "token") as reg,
        forwarding_proxy(reg.host, answer=_with_basic(where)) as proxy,
    ):
        pushed = layerdiff.push(
            image, f"docker://{proxy.host}/c/img:1", tls_verify=False, creds=CREDS
        )
        assert [b.status for b in pushed.blobs] == ["uploaded", "uploaded"]
        pulled = layerdiff.pull(
            f"docker://{proxy.host}/c/img:1", "back:1", tls_verify=False, creds=CREDS
        )
        assert pulled.manifest_digest == pushed.manifest_digest
        assert not any(h.get("Authorization", "").startswith("Basic") for _, _, h in proxy.seen), (
            "Basic credentials were sent to the registry"
        )


def test_credentials_are_not_sent_to_an_upload_location_on_another_host(tmp_path: Path) -> None:
    """A registry that sends its uploads to another host (a storage service, by a URL that
    needs no credentials of its own): the registry's credentials go to the registry alone, as
    on a redirect to another host."""
    image = small_image(tmp_path, "elsewhere")
    basic = "Basic " + base64.b64encode(CREDS.encode()).decode()

    def signed(_method: str, _path: str, headers: dict[str, str]) -> dict[str, str]:
        # The storage service's own access, which its URL would carry.
        kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return {**kept, "Authorization": basic}

    with (
        running_registry(tmp_path / "reg", "basic") as reg,
        forwarding_proxy(reg.host, request=signed) as storage,
    ):

        def elsewhere(method: str, _path: str, status: int, headers: list[tuple[str, str]]) -> Any:
            if method not in ("POST", "PATCH") or status != 202:
                return headers
            moved = []
            for k, v in headers:
                if k.lower() == "location":
                    where = urllib.parse.urlsplit(v)
                    v = f"http://{storage.host}{where.path}?{where.query}"
                moved.append((k, v))
            return moved

        with forwarding_proxy(reg.host, answer=elsewhere) as front:
            pushed = layerdiff.push(
                image, f"docker://{front.host}/s/img:1", tls_verify=False, creds=CREDS
            )
        assert [b.status for b in pushed.blobs] == ["uploaded", "uploaded"]
        assert any(h.get("Authorization") == basic for _, _, h in front.seen)
        assert {m for m, _, _ in storage.seen} >= {"PATCH", "PUT"}, storage.seen
        assert not any("Authorization" in h for _, _, h in storage.seen), storage.seen
        pulled = layerdiff.pull(reg.ref("s/img:1"), "back:1", tls_verify=False, creds=CREDS)
        assert pulled.manifest_digest == pushed.manifest_digest
