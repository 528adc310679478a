"""Download links without a server: `--expires`, the 7-day limit, what each store refuses,
and an S3 presigned URL signed offline."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dstack.errors import NotFoundError, UsageError
from dstack.run.artifacts import parse_expires, share
from dstack.store.base import MAX_SHARE_S, check_share_limit
from dstack.store.local import LocalStore
from dstack.store.pending import PendingStore


@pytest.mark.parametrize(("text", "seconds"), [
    ("24h", 86400), ("90m", 5400), ("7d", 604800), ("30s", 30), ("45", 45), ("1.5h", 5400),
    (" 2H ", 7200)])
def test_expires_is_read_as_a_duration(text: str, seconds: int) -> None:
    assert parse_expires(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "2x", "0s", "0.5s", "-1h"])
def test_a_bad_expires_is_refused_with_examples(text: str) -> None:
    with pytest.raises(UsageError, match="not a duration of a second or more") as refused:
        parse_expires(text)
    assert refused.value.hint == "Write it like 24h, 90m, 7d or 30s."


def test_links_last_a_second_to_seven_days() -> None:
    check_share_limit(1, "links")
    check_share_limit(MAX_SHARE_S, "links")
    with pytest.raises(UsageError, match=r"links last at most 7 days \(604800 s\)") as refused:
        check_share_limit(MAX_SHARE_S + 1, "links")
    assert refused.value.hint and "--expires 7d" in refused.value.hint
    with pytest.raises(UsageError, match="a second or more"):
        check_share_limit(0, "links")


def test_a_folder_store_refuses_before_looking_for_the_run(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(UsageError) as refused:
        share(store, "no-such-run", 60)  # not a NotFoundError: the refusal comes first
    assert "files on this machine" in refused.value.message
    assert refused.value.hint and "dstack artifacts download" in refused.value.hint
    with pytest.raises(UsageError, match="no link to sign"):
        store.share_url("runs/r/artifacts/x", 60)


def test_a_profile_without_a_workspace_has_nothing_to_share() -> None:
    with pytest.raises(NotFoundError, match="has not run anything yet"):
        share(PendingStore("s3://b", "aws"), ":t", 60)


def test_s3_presigns_offline_with_the_store_client(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from dstack.store.s3 import S3Store

    for name, value in {"AWS_ACCESS_KEY_ID": "AKIAOFFLINE", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_CONFIG_FILE": str(tmp_path / "c"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "k")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "DSTACK_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    store = S3Store("bkt", "team/x", endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    url = store.share_url("runs/r/artifacts/a b.txt", 90)  # no request is made
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("127.0.0.1:9", "/bkt/team/x/runs/r/artifacts/a%20b.txt")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, not the old SigV2
    assert query["X-Amz-Expires"] == "90"
    assert query["X-Amz-Credential"].startswith("AKIAOFFLINE/")
    assert "/eu-west-1/s3/" in query["X-Amz-Credential"]
    with pytest.raises(UsageError, match="S3 presigned URLs last at most 7 days"):
        store.share_url("runs/r/artifacts/a b.txt", 8 * 86400)


def test_gcs_user_credentials_cannot_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    from dstack.store.gcs import GCSStore

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    client = storage.Client(project="p", credentials=Credentials(token="user-token"))
    store = GCSStore("bkt", "x", client=client)
    with pytest.raises(UsageError) as refused:
        store.share_url("runs/r/artifacts/a", 60)
    assert "(user credentials) hold no private key" in refused.value.message
    assert refused.value.hint and "GOOGLE_APPLICATION_CREDENTIALS" in refused.value.hint
    with pytest.raises(UsageError, match="GCS V4 signed URLs last at most 7 days"):
        store.check_share(8 * 86400)
