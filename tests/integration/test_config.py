"""`dstack config`: profiles are checked against real endpoints before they are saved."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration.servers import Server, env_patch, moto_server  # noqa: F401 - fixtures

DSTACK = [sys.executable, "-m", "dstack.cli"]


def cli(home: Path, *args: str,
        env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with DSTACK_HOME=home; `env` values of None remove a variable."""
    full = {**os.environ, "DSTACK_HOME": str(home), **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([*DSTACK, *args], capture_output=True, text=True, env=full, timeout=120)


def aws_files(tmp: Path, moto: Server) -> dict[str, str | None]:
    """An AWS config with the profile `dev` (fake keys) whose STS is the moto server."""
    (tmp / "credentials").write_text("[dev]\naws_access_key_id = testing\n"
                                     "aws_secret_access_key = testing\n")
    (tmp / "config").write_text("[profile dev]\nregion = us-east-1\n")
    return {"AWS_CONFIG_FILE": str(tmp / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "credentials"),
            "AWS_ENDPOINT_URL_STS": moto.url, "AWS_ACCESS_KEY_ID": None,
            "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None}


def test_aws_profile_is_checked_and_saved_privately(
        tmp_path: Path, moto_server: Server) -> None:  # noqa: F811
    home = tmp_path / "home"
    env = aws_files(tmp_path, moto_server)
    done = cli(home, "config", "add", "aws", "gpu", "--aws-profile", "dev", "--region",
               "us-east-1", "--default", env=env)
    assert done.returncode == 0, done.stderr
    assert "account 123456789012" in done.stderr  # what STS on the server answered
    config = home / "config.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    doc = yaml.safe_load(config.read_text())
    assert doc["default"] == "gpu"
    settings = doc["profiles"]["gpu"]["settings"]
    assert settings["aws_profile"] == "dev" and settings["region"] == "us-east-1"
    assert settings["bucket"] == "dstack-123456789012-us-east-1-gpu"
    assert settings["store_url"] == \
        "s3://dstack-123456789012-us-east-1-gpu?region=us-east-1&profile=dev"
    assert "testing" not in config.read_text()  # the keys are referenced, never copied
    listed = json.loads(cli(home, "config", "list", "--json").stdout)
    assert {(p["name"], p["backend"], p["default"]) for p in listed} == {
        ("local", "local", False), ("gpu", "aws", True)}
    assert cli(home, "config", "default", "local").returncode == 0
    assert cli(home, "config", "remove", "gpu", "-y").returncode == 0
    assert [p["name"] for p in json.loads(cli(home, "config", "list", "--json").stdout)] == \
        ["local"]


def test_unknown_aws_profile_is_refused_with_what_to_do(
        tmp_path: Path, moto_server: Server) -> None:  # noqa: F811
    home = tmp_path / "home"
    done = cli(home, "config", "add", "aws", "gpu", "--aws-profile", "nope", "--region",
               "us-east-1", env=aws_files(tmp_path, moto_server))
    assert done.returncode == 2
    assert "no AWS profile named 'nope'" in done.stderr
    assert "aws configure --profile nope" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "config.yaml").exists()


def test_rejected_aws_credentials_say_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env: dict[str, str | None] = {
        "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE":
        str(tmp_path / "none"), "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None, "AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": None}
    done = cli(home, "config", "add", "aws", "gpu", "--region", "us-east-1", env=env)
    assert done.returncode == 2, done.stderr
    assert "has no credentials" in done.stderr and "aws configure" in done.stderr


def test_gcp_without_credentials_says_how_to_log_in(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env: dict[str, str | None] = {
        "GOOGLE_APPLICATION_CREDENTIALS": None, "HOME": str(tmp_path), "NO_GCE_CHECK": "True",
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "GCE_METADATA_HOST": "127.0.0.1:9"}
    done = cli(home, "config", "add", "gcp", "ml", "--project", "my-ml-project", "--zone",
               "us-central1-a", env=env)
    assert done.returncode == 2, done.stderr
    assert "gcloud auth application-default login" in done.stderr
    assert not (home / "config.yaml").exists()


def test_bad_values_are_refused_before_any_check(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args, words in [
        (["aws", "x", "--region", "mars-1"], "--region 'mars-1' is not an AWS region"),
        (["aws", "x", "--region", "us-east-1", "--bucket", "Bad_Bucket", "--skip-check"],
         "--bucket 'Bad_Bucket'"),
        (["aws", "x", "--region", "us-east-1", "--state-url", "ftp://x", "--skip-check",
          "--bucket", "b-1"], "--state-url"),
        (["gcp", "x", "--project", "p", "--zone", "us-central1"], "is not a GCP zone"),
        (["aws", "Bad Name", "--region", "us-east-1", "--bucket", "b-1", "--skip-check"],
         "invalid profile name"),
        (["aws", "x", "--region", "us-east-1", "--shared", "--state-url", "s3://b/s"],
         "--shared and --state-url both say where the state goes"),
        (["gcp", "x", "--project", "proj-123", "--zone", "us-central1-a", "--shared",
          "--skip-check"], "--shared creates the team's state bucket"),
    ]:
        done = cli(home, "config", "add", *args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
    assert not (home / "config.yaml").exists()


def test_a_new_aws_profile_can_be_planned_and_listed_before_its_bucket_exists(
        tmp_path: Path, moto_server: Server) -> None:  # noqa: F811
    """The first-run failure: every command read the bucket the first run creates."""
    import boto3

    home = tmp_path / "home"
    project = tmp_path / "project"
    (project / ".dstack").mkdir(parents=True)
    (project / ".dstack" / "workflows.yaml").write_text(
        "workflows:\n  - name: train\n    provider: bash\n    commands: ['echo hi']\n")
    env = {**aws_files(tmp_path, moto_server), "AWS_ENDPOINT_URL": moto_server.url,
           "DSTACK_S3_ENDPOINT_URL": moto_server.url, "DSTACK_CALLER_CIDR": None}
    assert cli(home, "config", "add", "aws", "ci", "--aws-profile", "dev", "--region",
               "us-east-1", "--default", env=env).returncode == 0
    dry = cli(home, "run", "-C", str(project), "train", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [s["name"] for s in plan["stacks"]] == ["workspace-ci", "run-<name>"]
    assert plan["instance"]["price_per_hour"].startswith("$")
    for command in (["ps", "-a", "--json"], ["tags", "list", "--json"], ["secrets", "list"]):
        listed = cli(home, *command, env=env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() in ("", "[]"), listed.stdout
    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1")
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "dstack-123456789012-us-east-1-ci" not in buckets  # nothing was created
    assert not (home / "state" / ".pulumi" / "stacks").exists()
    refused = cli(home, "tags", "add", "t", "nosuch-run-1", env=env)
    assert refused.returncode == 1 and "nosuch-run-1" in refused.stderr


def test_config_set_changes_one_setting_and_refuses_unknown_or_store_settings(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "config", "add", "aws", "ci", "--region", "us-east-1", "--bucket",
               "my-bucket", "--skip-check").returncode == 0
    assert cli(home, "config", "set", "ci", "max_duration", "8h").returncode == 0
    shown = json.loads(cli(home, "config", "show", "ci").stdout)
    assert shown["settings"]["max_duration"] == "8h"
    typo = cli(home, "config", "set", "ci", "max_duraton", "8h")
    assert typo.returncode == 2 and 'Did you mean "max_duration"' in typo.stderr
    fixed = cli(home, "config", "set", "ci", "region", "eu-west-1")
    assert fixed.returncode == 2 and "dstack config add aws ci" in fixed.stderr
    assert cli(home, "config", "set", "ci", "max_duration", "--unset").returncode == 0
    shown = json.loads(cli(home, "config", "show", "ci").stdout)
    assert "max_duration" not in shown["settings"]
