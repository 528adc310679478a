"""The store's keys (`dstack.store.keys`) are the layout DESIGN.md promises, and the keys a
listing finds read back as the names they were made from."""

from __future__ import annotations

import pytest

from dstack.store import keys


def test_the_keys_are_the_documented_layout() -> None:
    assert keys.run_key("wise-cat-1") == "runs/wise-cat-1/run.json"
    assert keys.log_prefix("wise-cat-1") == "runs/wise-cat-1/logs/"
    assert keys.log_chunk_key("wise-cat-1", 7) == "runs/wise-cat-1/logs/00000007.log"
    assert keys.artifact_prefix("wise-cat-1") == "runs/wise-cat-1/artifacts/"
    assert keys.stop_key("r") == "runs/r/stop.json"
    assert keys.heartbeat_key("r") == "runs/r/heartbeat.json"
    assert keys.stack_key("r") == "runs/r/stack.json"
    assert keys.run_env_key("r") == "runs/r/env.json"
    assert keys.tag_key("best") == "tags/best.json"
    assert keys.code_key("ab" * 32) == f"code/{'ab' * 32}.tar.gz"
    assert keys.secret_key("WANDB_API_KEY") == "secrets/WANDB_API_KEY"
    assert keys.wheel_key("0123abcd", "dstack-0.1-py3-none-any.whl") == \
        "wheels/0123abcd/dstack-0.1-py3-none-any.whl"


def test_everything_of_a_run_is_under_its_prefix() -> None:
    prefix = keys.run_prefix("r")
    assert prefix == "runs/r/" and prefix.startswith(keys.RUNS)
    for key in (keys.run_key("r"), keys.log_chunk_key("r", 0), keys.artifact_prefix("r"),
                keys.stop_key("r"), keys.heartbeat_key("r"), keys.stack_key("r"),
                keys.run_env_key("r")):
        assert key.startswith(prefix)
    assert keys.log_chunk_key("r", 9) < keys.log_chunk_key("r", 10)  # chunks sort in order


@pytest.mark.parametrize("tag", ["best", "v1.2", "a-b_c"])
def test_a_tag_key_reads_back(tag: str) -> None:
    assert keys.tag_of(keys.tag_key(tag)) == tag


@pytest.mark.parametrize("key", ["tags/.json", "tags/best.txt", "runs/r/run.json", "tags/"])
def test_other_keys_are_no_tag(key: str) -> None:
    assert keys.tag_of(key) is None


def test_a_code_key_reads_back_and_only_a_whole_digest_is_one() -> None:
    sha = "0f" * 32
    assert keys.code_of(keys.code_key(sha)) == sha
    assert keys.CODE_ARCHIVE.match(f"{sha}.tar.gz")
    for key in (f"code/{sha[:-1]}.tar.gz", f"code/{sha}.tar", f"code/{sha.upper()}.tar.gz",
                f"other/{sha}.tar.gz"):
        assert keys.code_of(key) is None
