"""deepspeed.collective_timeout_s: checked at config load, and handed to the process group's init."""
import datetime

import pytest

from coin.training import dist
from coin.training.config import ConfigError, config_from_dict


@pytest.mark.parametrize("value", [0, -5, "inf", "nan", "soon"])
def test_a_bad_timeout_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"deepspeed": {"collective_timeout_s": value}}, check_paths=False)
    msg = str(info.value)
    assert msg.startswith("deepspeed.collective_timeout_s: expected") and "\n" not in msg


def test_the_default_is_half_an_hour_and_an_integer_is_accepted():
    assert config_from_dict({}, check_paths=False).deepspeed.collective_timeout_s == 1800.0
    assert config_from_dict({"deepspeed": {"collective_timeout_s": 90}}, check_paths=False) \
        .deepspeed.collective_timeout_s == 90.0


@pytest.fixture
def init_calls(monkeypatch):
    import deepspeed

    calls = []
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: calls.append(kw))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # set first so that teardown restores the variable's absence: init() sets it, and a RANK
        # left behind makes every later `coin train --nproc` in this process refuse to launch
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    return calls


def test_the_timeout_reaches_init_distributed(init_calls):
    dist.init(90.0)
    dist.init()
    assert [c["timeout"] for c in init_calls] == [datetime.timedelta(seconds=90), datetime.timedelta(seconds=1800)]
