"""What the operator allows: defaults by listening address, the variables that change them, and bad values."""

import pytest

from workbench.access import FEATURES, Access, is_loopback


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]", " LOCALHOST "])
def test_loopback_addresses(address):
    assert is_loopback(address)


@pytest.mark.parametrize("address", [None, "", "0.0.0.0", "::", "192.168.1.20", "example.org", "10.0.0.1"])
def test_every_interface_or_another_address_is_not_loopback(address):
    assert not is_loopback(address)


def test_on_loopback_everything_is_allowed_and_the_cache_is_shared():
    access = Access.from_env("localhost", {})
    assert access.remote_code and access.paths and access.downloads and access.cache_settings and access.servers
    assert access.cache_scope == "shared" and access.loopback and not access.problems


@pytest.mark.parametrize("address", [None, "0.0.0.0"])
def test_off_loopback_everything_is_off_and_the_cache_is_per_session(address):
    access = Access.from_env(address, {})
    assert not (access.remote_code or access.paths or access.downloads or access.cache_settings or access.servers)
    assert access.cache_scope == "session" and not access.problems


def test_the_operator_allows_each_feature_on_its_own():
    access = Access.from_env("0.0.0.0", {"WORKBENCH_ALLOW_PATHS": "yes", "WORKBENCH_ALLOW_DOWNLOADS": "TRUE",
                                         "WORKBENCH_CACHE_SCOPE": "shared"})
    assert access.paths and access.downloads and not access.remote_code
    assert access.cache_scope == "shared" and access.cache_settings  # shared: its settings default to allowed
    local = Access.from_env("127.0.0.1", {"WORKBENCH_ALLOW_REMOTE_CODE": "0", "WORKBENCH_CACHE_SCOPE": "session"})
    assert not local.remote_code and local.paths and local.cache_scope == "session" and not local.cache_settings
    assert Access.from_env("::", {"WORKBENCH_ALLOW_CACHE_SETTINGS": "1"}).cache_settings
    assert Access.from_env("0.0.0.0", {"WORKBENCH_ALLOW_SERVERS": "1"}).servers
    assert not Access.from_env("localhost", {"WORKBENCH_ALLOW_SERVERS": "no"}).servers


def test_a_value_that_means_nothing_counts_as_off_and_says_so():
    access = Access.from_env("localhost", {"WORKBENCH_ALLOW_REMOTE_CODE": "maybe", "WORKBENCH_CACHE_SCOPE": "all"})
    assert not access.remote_code and access.paths and access.cache_scope == "session"
    flag, scope = sorted(access.problems)
    assert "WORKBENCH_ALLOW_REMOTE_CODE='maybe'" in flag and "counts as off" in flag
    assert "WORKBENCH_CACHE_SCOPE='all'" in scope and "per session" in scope


@pytest.mark.parametrize("feature", list(FEATURES))
def test_why_off_names_the_variable_to_set(feature):
    access = Access.from_env("0.0.0.0", {})
    assert not access.allows(feature)
    assert f"{FEATURES[feature][0]}=1" in access.why_off(feature) and "is off on this server" in access.why_off(feature)
