"""Policy loading: built-ins, inheritance, overrides, and every error case naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeloader.errors import PolicyError
from safeloader.policy import (
    BUILTIN_NAMES,
    SANDBOX_LAYERS,
    load_policy,
    policy_from_mapping,
    source_allowed,
    with_overrides,
)
from safeloader.policy.loader import BUILTIN_POLICY_DIR
from safeloader.policy.schema import DEFAULT_REQUIRED_LAYERS, Policy


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtins_load_and_keep_the_sandbox_fully_on(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name and policy.origin[0].endswith(f"{name}.toml")
    assert set(DEFAULT_REQUIRED_LAYERS) <= set(policy.sandbox.require) and policy.sandbox.network is False
    assert set(policy.sandbox.require) <= set(SANDBOX_LAYERS)
    if name == "strict":  # strict also requires the memory cgroup (fails closed on hosts without one)
        assert policy.sandbox.require == SANDBOX_LAYERS
    assert policy.weights.allow_pickle is False


def test_builtin_differences() -> None:
    default, strict, permissive = (load_policy(n) for n in ("default", "strict", "permissive"))
    assert (default.audit.mode, default.audit.fail_on, default.audit.restricted_python) == ("enforce", "high", "report")
    assert (strict.audit.fail_on, strict.audit.restricted_python) == ("medium", "enforce")
    assert strict.sources.require_pinned_revision and strict.sources.require_signature
    assert strict.sandbox.memory_limit_mb == 4096 and strict.sandbox.load_timeout_s == 120.0
    assert permissive.audit.mode == "warn" and permissive.sandbox == default.sandbox
    assert len(strict.origin) == 2 and strict.origin[1].endswith("default.toml")


def test_acme_example_extends_default() -> None:
    acme = load_policy(BUILTIN_POLICY_DIR / "examples" / "acme.toml")
    assert acme.name == "acme" and acme.origin[-1].endswith("default.toml")
    assert acme.audit.deny_imports == ("wandb", "sentry_sdk") and acme.audit.rule_override("SL802") == "low"
    assert acme.sandbox.memory_limit_mb == 16384 and acme.sandbox.env_allow == ("ACME_PIPELINE_MODE",)
    assert acme.sandbox.call_timeout_s == 600.0  # inherited
    assert source_allowed(acme, "acme/upscaler") and source_allowed(acme, "community:lpw_stable_diffusion")
    assert not source_allowed(acme, "acme/experimental-x") and not source_allowed(acme, "evil/repo")


def test_multi_level_inheritance_merges_rules_and_relative_extends(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base/org.toml",
        '[policy]\nname = "org"\nextends = "strict"\n[audit.rules]\nSL101 = "low"\n'
        'SL202 = "medium"\n[sandbox]\nread_paths = ["/data"]\n',
    )
    team = write(
        tmp_path,
        "team.toml",
        '[policy]\nname = "team"\nextends = "base/org.toml"\n'
        '[audit.rules]\nSL202 = "critical"\n[sources]\ntrusted_keys = ["keys/team.pem"]\n',
    )
    policy = load_policy(team)
    assert policy.name == "team" and len(policy.origin) == 4
    assert dict(policy.audit.rules) == {"SL101": "low", "SL202": "critical"}
    assert policy.audit.fail_on == "medium" and policy.sandbox.read_paths == ("/data",)
    assert policy.sources.trusted_keys == (str((tmp_path / "keys" / "team.pem").resolve()),)
    assert policy.description == ""  # descriptions are not inherited


def test_policy_given_as_value_path_env_or_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = Policy(name="inline")
    assert load_policy(value) is value
    assert load_policy().name == "default"
    path = write(tmp_path, "env.toml", '[policy]\nname = "from-env"\n')
    monkeypatch.setenv("SAFELOADER_POLICY", str(path))
    assert load_policy(None).name == "from-env"
    monkeypatch.chdir(tmp_path)
    assert load_policy("env.toml").name == "from-env"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[polcy]\nname = 'x'\n", "unknown table [polcy]"),
        ("[audit]\nmood = 'warn'\n", "unknown key 'audit.mood'"),
        ("[audit]\nmode = 'loud'\n", "'audit.mode' = 'loud'; use one of enforce, warn, off"),
        ("[audit]\nfail_on = 'severe'\n", "'audit.fail_on'"),
        ("[audit]\nrestricted_python = 'yes'\n", "'audit.restricted_python'"),
        ("[audit.rules]\nSL101 = 'loud'\n", "'audit.rules.SL101'"),
        ("[audit.rules]\nSL101 = 3\n", "'audit.rules.SL101'"),
        ("[sandbox]\nnetwork = 'no'\n", "'sandbox.network' must be a bool, got str"),
        ("[sandbox]\nmemory_limit_mb = 1.5\n", "'sandbox.memory_limit_mb' must be a int"),
        ("[sandbox]\nmemory_limit_mb = true\n", "'sandbox.memory_limit_mb' must be a int"),
        ("[sandbox]\nmemory_limit_mb = -1\n", "'sandbox.memory_limit_mb' must be a positive number"),
        ("[sandbox]\ncall_timeout_s = 0\n", "'sandbox.call_timeout_s' must be a positive number"),
        ("[sandbox]\ntmp_size_mb = 0\n", "'sandbox.tmp_size_mb' must be a positive number"),
        ("[sandbox]\ntmp_size_mb = '1G'\n", "'sandbox.tmp_size_mb' must be a int"),
        ("[sandbox]\nthreads = 1000\n", "'sandbox.threads' must be between"),
        ("[sandbox]\nrequire = ['firewall']\n", "unknown layer 'firewall'"),
        ("[sources]\nallow = 'acme/*'\n", "'sources.allow' must be a list[str]"),
        ("[sources]\nallow = [1]\n", "'sources.allow' must be a list[str]"),
        ("sources = 3\n", "[sources] must be a table"),
        ("[weights]\nallow_pickle = 1\n", "'weights.allow_pickle' must be a bool"),
        ("[policy\n", "is not valid TOML"),
        ("[audit.rules]\nSL1234 = 'low'\n", "'audit.rules.SL1234' names no rule"),
        ("x = " + "[" * 3000 + "]" * 3000 + "\n", "nests arrays or tables too deeply"),
        ("[policy]\nextends = 'missing.toml'\n", "does not exist"),
        ("[policy]\nextends = '~no-such-user-safeloader/base.toml'\n", "does not exist"),  # found by fuzzing
        ("[policy]\nextends = 'nonsense'\n", "unknown built-in policy 'nonsense'"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert message in str(info.value)
    assert str(path) in str(info.value) or "extends" in text or "TOML" in message


def test_errors_in_a_parent_name_the_parent(tmp_path: Path) -> None:
    parent = write(tmp_path, "parent.toml", "[sandbox]\ngpu = 'yes'\n")
    child = write(tmp_path, "child.toml", "[policy]\nextends = 'parent.toml'\n")
    with pytest.raises(PolicyError, match=str(parent)):
        load_policy(child)


def test_extends_cycles_and_depth(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[policy]\nextends = 'b.toml'\n")
    write(tmp_path, "b.toml", "[policy]\nextends = 'a.toml'\n")
    with pytest.raises(PolicyError, match="cycle"):
        load_policy(tmp_path / "a.toml")
    write(tmp_path, "self.toml", "[policy]\nextends = 'self.toml'\n")
    with pytest.raises(PolicyError, match="cycle"):
        load_policy(tmp_path / "self.toml")
    for i in range(20):
        write(tmp_path, f"d{i}.toml", f"[policy]\nextends = 'd{i + 1}.toml'\n" if i < 19 else "[policy]\n")
    with pytest.raises(PolicyError, match="levels deep"):
        load_policy(tmp_path / "d0.toml")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[policy]\nname = '\xe9'\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "absent.toml")
    with pytest.raises(PolicyError, match="unknown built-in policy 'defualt'"):
        load_policy("defualt")


def test_with_overrides_and_mapping() -> None:
    policy = with_overrides(load_policy("default"), audit={"fail_on": "low"}, sandbox={"network": True})
    assert policy.audit.fail_on == "low" and policy.sandbox.network is True
    with pytest.raises(PolicyError, match="unknown key"):
        with_overrides(policy, audit={"failon": "low"})
    mapped = policy_from_mapping({"policy": {"extends": "strict", "name": "m"}, "audit": {"mode": "warn"}})
    assert mapped.name == "m" and mapped.audit.mode == "warn" and mapped.audit.fail_on == "medium"
    with pytest.raises(PolicyError, match="<mapping>"):
        policy_from_mapping({"audit": {"mode": 1}})


def test_source_patterns() -> None:
    policy = policy_from_mapping({"sources": {"allow": ["acme/*", "local:*"], "deny": ["acme/bad"]}})
    assert source_allowed(policy, "acme/good") and source_allowed(policy, "local:/home/x")
    assert not source_allowed(policy, "acme/bad") and not source_allowed(policy, "community:x")


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-1"])
def test_timeouts_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[sandbox]\nload_timeout_s = {value}\n")
    with pytest.raises(PolicyError, match="load_timeout_s"):
        load_policy(path)


def test_a_policy_of_the_wrong_type_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="built-in name, path or Policy"):
        load_policy(123)  # type: ignore[arg-type]
