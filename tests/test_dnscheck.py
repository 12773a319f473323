"""DNS preflight against zone files in tests/data/zones (never the network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailctl.dns.auth_checks import org_domain
from mailctl.dns.checks import CheckReport, Provider, run_checks
from mailctl.dns.resolver import ZoneResolver
from mailctl.dns.spf import SpfResult, spf_check_host
from mailctl.dns.verdict import Check, Status
from mailctl.errors import DnsTimeout, NoAnswer, NXDomain, UsageError
from mailctl.message.dkim import DkimAlgorithm, DkimKeyConfig

ZONES = Path(__file__).parent / "data" / "zones"
KEYS = ZONES / "keys"
ZONE_FILES = sorted(ZONES.glob("*.zone"))


@pytest.fixture(scope="module")
def zones() -> ZoneResolver:
    return ZoneResolver.from_files(ZONE_FILES)


def key(
    domain: str,
    keyfile: str = "rsa2048.pem",
    selector: str = "s1",
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256,
) -> DkimKeyConfig:
    return DkimKeyConfig(selector, domain, (KEYS / keyfile).read_bytes(), algorithm)


def check(resolver: ZoneResolver, domain: str, **overrides: object) -> CheckReport:
    """A single-domain setup where From = envelope = ``domain``, sending from 192.0.2.10."""
    arguments: dict[str, object] = {
        "from_domain": domain,
        "envelope_domain": domain,
        "sending_ips": ["192.0.2.10"],
        "helo_name": "mail.example.com",
        "dkim_keys": [key(domain)],
        "marketing": True,
        "unsubscribe_url": "https://example.com/u",
        "unsubscribe_mailto": None,
    }
    arguments.update(overrides)
    return run_checks(resolver, **arguments)  # type: ignore[arg-type]


def status(report: CheckReport, check_id: str, subject: str | None = None) -> Status:
    found = [c for c in report.checks if c.id == check_id and subject in (None, c.subject)]
    assert len(found) == 1, (check_id, subject, report.checks)
    return found[0].status


def failed_ids(report: CheckReport) -> set[str]:
    return {str(c.id) for c in report.failed}


def assert_fixes(report: CheckReport) -> None:
    for c in report.failed:
        assert c.fix and "\n" not in c.fix, c


def test_good_domain_passes_everything(zones: ZoneResolver) -> None:
    report = run_checks(
        zones,
        from_domain="example.com",
        envelope_domain="bounces.example.com",
        sending_ips=["192.0.2.10", "192.0.2.11", "2001:db8::10"],
        helo_name=None,
        dkim_keys=[
            key("example.com"),
            key("example.com", "ed25519.pem", "e1", DkimAlgorithm.ED25519_SHA256),
            key("example.com", selector="esp"),
        ],
        marketing=True,
        unsubscribe_url="https://example.com/unsubscribe/abc",
        unsubscribe_mailto="mailto:unsubscribe@example.com",
    )
    assert [c for c in report.checks if c.status is not Status.PASS] == []
    assert not report.failed
    assert {c.id for c in report.checks} >= {
        "spf.record",
        "spf.lookups",
        "spf.authorises",
        "spf.all",
        "dkim.record",
        "dkim.key_match",
        "dkim.key_size",
        "dmarc.record",
        "dmarc.policy",
        "dmarc.alignment",
        "rdns.fcrdns",
        "mx.bounce",
        "unsubscribe.one_click",
    }
    for provider in Provider:
        assert report.requirements[provider].met, provider
    as_dict = report.as_dict()
    assert as_dict["requirements"]["gmail"] == {"met": True, "missing": [], "unchecked": []}


def test_good_single_domain_with_helo(zones: ZoneResolver) -> None:
    report = check(zones, "rdns.test")
    assert not report.failed and not report.warnings
    assert status(report, "rdns.helo") is Status.PASS


@pytest.mark.parametrize(
    ("domain", "check_id", "expected", "also_failing"),
    [
        ("nospf.test", "spf.record", Status.FAIL, set()),
        ("twospf.test", "spf.record", Status.FAIL, set()),
        ("spfsyntax.test", "spf.record", Status.FAIL, set()),
        # DKIM still aligns, so DMARC alignment passes without SPF.
        ("spfmissing.test", "spf.authorises", Status.FAIL, set()),
        ("spfloop.test", "spf.lookups", Status.FAIL, {"spf.authorises"}),
        ("spfmany.test", "spf.lookups", Status.FAIL, {"spf.authorises"}),
        ("plusall.test", "spf.all", Status.FAIL, set()),
        ("qall.test", "spf.all", Status.WARN, set()),
        ("dkimbad.test", "dkim.key_match", Status.FAIL, set()),
        ("dkim512.test", "dkim.key_size", Status.FAIL, set()),
        ("dkim1024.test", "dkim.key_size", Status.WARN, set()),
        ("nodkim.test", "dkim.record", Status.FAIL, set()),
        ("nodmarc.test", "dmarc.record", Status.FAIL, set()),
        ("dmarcnone.test", "dmarc.policy", Status.WARN, set()),
        ("nomx.test", "mx.bounce", Status.FAIL, set()),
        ("aonly.test", "mx.bounce", Status.WARN, set()),
        ("nullmx.test", "mx.bounce", Status.FAIL, set()),
    ],
)
def test_each_broken_record_fails_or_warns_its_own_check_with_a_fix(
    zones: ZoneResolver, domain: str, check_id: str, expected: Status, also_failing: set[str]
) -> None:
    keyfile = {"dkim512.test": "rsa512.pem", "dkim1024.test": "rsa1024.pem"}.get(
        domain, "rsa2048.pem"
    )
    report = check(zones, domain, dkim_keys=[key(domain, keyfile)])
    assert status(report, check_id) is expected
    wanted_failures = ({check_id} if expected is Status.FAIL else set()) | also_failing
    assert failed_ids(report) == wanted_failures
    assert_fixes(report)
    if expected is Status.WARN:
        assert all(c.fix for c in report.warnings if c.id == check_id)


def test_spf_fix_names_the_missing_ip(zones: ZoneResolver) -> None:
    report = check(zones, "spfmissing.test", sending_ips=["192.0.2.10", "2001:db8::10"])
    authorises = next(c for c in report.failed if c.id == "spf.authorises")
    assert authorises.fix == (
        'Add "ip4:192.0.2.10 ip6:2001:db8::10" to the SPF record at spfmissing.test, before its all'
    )
    nospf = next(c for c in check(zones, "nospf.test").failed)
    assert nospf.fix == 'Publish "v=spf1 ip4:192.0.2.10 -all" at nospf.test'


def test_spf_lookup_limit_is_a_permerror(zones: ZoneResolver) -> None:
    evaluation = spf_check_host(zones, "192.0.2.10", "spfmany.test")
    assert evaluation.result is SpfResult.PERMERROR
    assert "more than 10 DNS lookups" in evaluation.reason
    report = check(zones, "spfmany.test")
    lookups = next(c for c in report.checks if c.id == "spf.lookups")
    assert lookups.detail.startswith("12 DNS lookups")
    loop = next(c for c in check(zones, "spfloop.test").checks if c.id == "spf.lookups")
    assert "include loop: spfloop.test → a.spfloop.test → b.spfloop.test → a.spfloop.test" in (
        loop.detail
    )


@pytest.mark.parametrize(
    ("ip", "domain", "result"),
    [
        ("192.0.2.10", "example.com", SpfResult.PASS),  # a:
        ("192.0.2.11", "example.com", SpfResult.PASS),  # include -> ip4 /31
        ("2001:db8::99", "example.com", SpfResult.PASS),  # include -> ip6 /64
        ("192.0.2.12", "example.com", SpfResult.FAIL),
        ("192.0.2.11", "bounces.example.com", SpfResult.PASS),  # redirect
        ("198.51.100.9", "spfmissing.test", SpfResult.FAIL),
        ("192.0.2.10", "qall.test", SpfResult.PASS),
        ("198.51.100.9", "qall.test", SpfResult.NEUTRAL),
        ("192.0.2.10", "nospf.test", SpfResult.NONE),
        ("192.0.2.10", "twospf.test", SpfResult.PERMERROR),
        ("192.0.2.10", "spfloop.test", SpfResult.PERMERROR),
    ],
)
def test_spf_check_host_gives_the_expected_result(
    zones: ZoneResolver, ip: str, domain: str, result: SpfResult
) -> None:
    assert spf_check_host(zones, ip, domain).result is result


def test_misaligned_from_fails_dmarc_alignment_with_a_fix(zones: ZoneResolver) -> None:
    report = check(
        zones,
        "misaligned.test",
        envelope_domain="bounces.example.com",
        dkim_keys=[key("example.com")],
    )
    assert status(report, "dmarc.alignment") is Status.FAIL
    assert failed_ids(report) == {"dmarc.alignment"}
    alignment = report.failed[0]
    assert alignment.fix == "Sign with a DKIM key for misaligned.test (d=misaligned.test)"
    assert report.requirements[Provider.GMAIL].missing == ("DMARC alignment",)
    assert report.requirements[Provider.MICROSOFT].missing == ("DMARC alignment",)


def test_only_spf_aligned_warns(zones: ZoneResolver) -> None:
    report = check(zones, "rdns.test", dkim_keys=[key("example.com")])
    assert status(report, "dmarc.alignment") is Status.WARN
    assert not report.failed


def test_dmarc_falls_back_to_the_organisational_domain(zones: ZoneResolver) -> None:
    report = check(
        zones,
        "news.example.com",
        envelope_domain="bounces.example.com",
        dkim_keys=[key("example.com")],
    )
    dmarc = next(c for c in report.checks if c.id == "dmarc.record")
    assert dmarc.status is Status.PASS and dmarc.subject == "_dmarc.example.com"
    assert "inherited" in dmarc.detail
    assert status(report, "dmarc.alignment") is Status.PASS
    assert org_domain("a.b.Example.COM.") == "example.com"


@pytest.mark.parametrize(
    ("ip", "helo", "fcrdns", "helo_status"),
    [
        ("192.0.2.10", "mail.example.com", Status.PASS, Status.PASS),
        ("192.0.2.13", "mail.example.com", Status.FAIL, Status.FAIL),  # no PTR
        ("192.0.2.12", "mail.example.com", Status.FAIL, Status.FAIL),  # PTR not confirmed
        ("192.0.2.14", "14-2-0-192.dyn.example.com", Status.WARN, Status.PASS),  # generic
        ("192.0.2.10", "wrong.example.com", Status.PASS, Status.FAIL),  # HELO mismatch
        ("192.0.2.10", "alias.example.com", Status.PASS, Status.WARN),  # HELO resolves only
        ("2001:db8::10", "mail6.example.com", Status.PASS, Status.PASS),
    ],
)
def test_reverse_dns_and_helo_decide_the_provider_requirements(
    zones: ZoneResolver, ip: str, helo: str, fcrdns: Status, helo_status: Status
) -> None:
    report = check(zones, "rdns.test", sending_ips=[ip], helo_name=helo)
    assert status(report, "rdns.fcrdns") is fcrdns
    assert status(report, "rdns.helo") is helo_status
    assert_fixes(report)
    assert report.requirements[Provider.GMAIL].met is (
        fcrdns is not Status.FAIL and "2001" not in ip
    )
    assert report.requirements[Provider.MICROSOFT].met is ("2001" not in ip)


def test_fcrdns_failures_name_the_record_to_publish(zones: ZoneResolver) -> None:
    report = check(zones, "rdns.test", sending_ips=["192.0.2.12", "192.0.2.13"])
    fixes = {c.subject: c.fix for c in report.failed if c.id == "rdns.fcrdns"}
    assert fixes == {
        "192.0.2.12": 'Publish "A 192.0.2.12" at mail.nofcrdns.test',
        "192.0.2.13": "Ask the owner of 192.0.2.13 (your hosting provider) to set its PTR to "
        "mail.example.com",
    }
    assert report.requirements[Provider.YAHOO].missing == ("FCrDNS",)


@pytest.mark.parametrize(
    ("url", "mailto", "expected"),
    [
        ("https://example.com/u/1", None, Status.PASS),
        ("https://example.com/u/1", "mailto:u@example.com", Status.PASS),
        ("http://example.com/u/1", None, Status.FAIL),
        (None, "mailto:u@example.com", Status.FAIL),
        (None, None, Status.FAIL),
    ],
)
def test_gmail_requires_one_click_unsubscribe(
    zones: ZoneResolver, url: str | None, mailto: str | None, expected: Status
) -> None:
    report = check(zones, "rdns.test", unsubscribe_url=url, unsubscribe_mailto=mailto)
    assert status(report, "unsubscribe.one_click") is expected
    assert_fixes(report)
    gmail = report.requirements[Provider.GMAIL]
    assert gmail.missing == (() if expected is Status.PASS else ("one-click unsubscribe",))
    assert report.requirements[Provider.MICROSOFT].met  # only recommended there


def test_transactional_mail_skips_unsubscribe(zones: ZoneResolver) -> None:
    report = check(zones, "rdns.test", marketing=False, unsubscribe_url=None)
    assert not any(c.id == "unsubscribe.one_click" for c in report.checks)
    assert report.requirements[Provider.GMAIL].met


def test_without_a_dkim_key_dkim_fails_and_alignment_only_warns(zones: ZoneResolver) -> None:
    report = check(zones, "rdns.test", dkim_keys=[])
    # SPF still aligns, so alignment only warns; DKIM itself is missing.
    assert failed_ids(report) == {"dkim.record"}
    assert status(report, "dmarc.alignment") is Status.WARN
    assert "DKIM" in report.requirements[Provider.MICROSOFT].missing


def test_fast_mode_skips_infrastructure_checks(zones: ZoneResolver) -> None:
    arguments = {
        "from_domain": "example.com",
        "envelope_domain": "bounces.example.com",
        "sending_ips": ["192.0.2.10", "192.0.2.11"],
        "helo_name": None,
        "dkim_keys": [key("example.com")],
        "marketing": True,
        "unsubscribe_url": "https://example.com/u",
        "unsubscribe_mailto": None,
    }
    full_resolver = ZoneResolver.from_files(ZONE_FILES)
    fast_resolver = ZoneResolver.from_files(ZONE_FILES)
    run_checks(full_resolver, **arguments)  # type: ignore[arg-type]
    fast = run_checks(fast_resolver, fast=True, **arguments)  # type: ignore[arg-type]
    ids = {str(c.id) for c in fast.checks}
    assert not ids & {"rdns.fcrdns", "rdns.helo", "spf.lookups"}
    assert not any(c.subject == "example.com" and c.id.startswith("spf.") for c in fast.checks)
    assert not fast.failed
    assert fast.requirements[Provider.GMAIL] == fast.requirements[Provider.GMAIL].__class__(
        met=False, missing=(), unchecked=("FCrDNS",)
    )
    assert fast.requirements[Provider.MICROSOFT].met
    assert fast_resolver.queries < full_resolver.queries
    # Fast mode still catches an SPF lookup-limit permerror along the IP's path.
    assert status(check(zones, "spfmany.test", fast=True), "spf.authorises") is Status.FAIL


def test_dns_timeout_is_inconclusive() -> None:
    resolver = ZoneResolver.from_files(ZONE_FILES, timeouts=["_dmarc.rdns.test"])
    report = check(resolver, "rdns.test")
    dmarc = next(c for c in report.checks if c.id == "dmarc.record")
    assert dmarc.status is Status.WARN and dmarc.inconclusive
    assert report.requirements[Provider.GMAIL].unchecked == ("DMARC",)
    assert not report.requirements[Provider.GMAIL].met


def test_invalid_sending_ip(zones: ZoneResolver) -> None:
    with pytest.raises(UsageError, match="not an IP address"):
        check(zones, "rdns.test", sending_ips=["mail.example.com"])


def test_failing_check_requires_a_fix() -> None:
    with pytest.raises(ValueError):
        Check("spf.record", "example.com", Status.FAIL, "broken")  # type: ignore[arg-type]


def test_zone_resolver_answers_from_zone_files_like_dns(zones: ZoneResolver) -> None:
    assert zones.mx("example.com") == [(10, "mx.example.com")]
    assert zones.mx("nullmx.test") == [(0, "")]
    assert zones.a("mail.example.com") == ["192.0.2.10"]
    assert zones.ptr("192.0.2.10") == ["mail.example.com"]
    assert zones.ptr("2001:db8::10") == ["mail6.example.com"]  # zone with $ORIGIN
    assert zones.txt("esp._domainkey.example.com")[0].startswith("v=DKIM1")  # via CNAME
    with pytest.raises(NXDomain):
        zones.a("missing.example.com")
    with pytest.raises(NXDomain):
        zones.a("example.invalid")
    with pytest.raises(NoAnswer):
        zones.aaaa("mail.example.com")
    with pytest.raises(NoAnswer):
        zones.txt("_domainkey.example.com")  # empty non-terminal
    with pytest.raises(DnsTimeout):
        ZoneResolver.from_files(ZONE_FILES, timeouts=["example.com"]).txt("example.com")
