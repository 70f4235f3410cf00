//! What the zone answers to one question: pure, no I/O, so every rule is unit-tested here.
//!
//! | name                                   | type                | answer                          |
//! |----------------------------------------|---------------------|---------------------------------|
//! | outside `<base>`                       | any                 | REFUSED, AA=0 (no recursion)    |
//! | `<base>`                               | SOA, NS, A, AAAA, CAA | the records (NODATA if none)  |
//! | `<base>`                               | ANY                 | the SOA (RFC 8482 minimal)      |
//! | an in-zone `ns_names` entry, with `ns_addrs` | A, AAAA (ANY: both) | `ns_addrs` (the glue)   |
//! | `<host>.<base>` (wildcard)             | A, AAAA (ANY: both) | the gateway addresses           |
//! | `_acme-challenge.<base or host>`       | TXT (ANY: TXT)      | the challenge values            |
//! | a name with another `_label` below base| any                 | NXDOMAIN                        |
//! | anything else in the zone              | any                 | NOERROR/NODATA, SOA in authority|
//! | any name                               | AXFR, IXFR          | REFUSED (no zone transfers)     |
//! | any name                               | class other than IN | REFUSED                         |
//!
//! Decisions: the wildcard covers every host name below the base, so no host name is
//! NXDOMAIN. An `_acme-challenge` name without values answers NODATA, not NXDOMAIN: the name
//! comes and goes with each order, and an NXDOMAIN would also deny every name below it
//! (RFC 8020). Other underscore names (`_dmarc.<base>`, `_tcp.x.<base>`) are service or
//! attribute names (RFC 8552) that no wildcard of host addresses should cover: NXDOMAIN.

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use crate::zone::{Fixed, Place, Snapshot};

/// One answer, before it is put in a message.
#[derive(Debug)]
pub(crate) struct Answer {
    pub code: ResponseCode,
    /// AA: set for every answer about a name in the zone.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The SOA for negative answers (RFC 2308).
    pub authority: Vec<Record>,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

/// The answer to `qname`/`qtype`/`qclass`. `qname` keeps the case of the question, which the
/// wildcard answers' owner names copy (resolvers that randomise case compare it).
pub(crate) fn answer(
    fixed: &Fixed,
    snap: &Snapshot,
    qname: &Name,
    qtype: RecordType,
    qclass: DNSClass,
) -> Answer {
    if qclass != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Answer::refused();
    }
    let lower = LowerName::new(qname);
    let place = fixed.place(&lower);
    let addresses_of = |want: RecordType, v4s: &[RData], v6s: &[RData]| -> Vec<Record> {
        let v4 = matches!(want, RecordType::A | RecordType::ANY);
        let v6 = matches!(want, RecordType::AAAA | RecordType::ANY);
        let mut owner = qname.clone();
        owner.set_fqdn(true);
        let pick = |on: bool, list: &[RData]| -> Vec<Record> {
            if !on {
                return Vec::new();
            }
            list.iter()
                .map(|r| Record::from_rdata(owner.clone(), fixed.ttl, r.clone()))
                .collect()
        };
        let mut out = pick(v4, v4s);
        out.extend(pick(v6, v6s));
        out
    };
    let addresses = |want: RecordType| addresses_of(want, &snap.v4, &snap.v6);
    let records: Vec<Record> = match place {
        Place::Outside => return Answer::refused(),
        Place::Absent => {
            return Answer {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: Vec::new(),
                authority: vec![snap.negative_soa.clone()],
            }
        }
        Place::Apex => match qtype {
            RecordType::SOA | RecordType::ANY => vec![snap.soa.clone()],
            RecordType::NS => snap.ns.clone(),
            RecordType::CAA => snap.caa.clone(),
            RecordType::A | RecordType::AAAA => addresses(qtype),
            _ => Vec::new(),
        },
        Place::Host => match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => addresses(qtype),
            _ => Vec::new(),
        },
        Place::NameServer => match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                addresses_of(qtype, &fixed.ns_v4, &fixed.ns_v6)
            }
            _ => Vec::new(),
        },
        Place::Challenge => match qtype {
            RecordType::TXT | RecordType::ANY => snap.txt.get(&lower).cloned().unwrap_or_default(),
            _ => Vec::new(),
        },
    };
    let authority = if records.is_empty() {
        vec![snap.negative_soa.clone()]
    } else {
        Vec::new()
    };
    Answer {
        code: ResponseCode::NoError,
        authoritative: true,
        answers: records,
        authority,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::str::FromStr;

    use super::*;
    use crate::zone::ZoneHandle;

    fn zone(extra: &str) -> ZoneHandle {
        let cfg: config::DnsConfig = config::from_toml_str(&format!(
            "base_domain = \"apps.example.com\"\n\
             gateway_addrs = [\"192.0.2.1\", \"192.0.2.2\", \"2001:db8::1\"]\n\
             api.token = \"dns-api-token-0123456789\"\n{extra}"
        ))
        .unwrap();
        ZoneHandle::from_config(&cfg).unwrap()
    }

    fn ask(z: &ZoneHandle, name: &str, t: RecordType) -> Answer {
        answer(
            z.fixed(),
            &z.snapshot(),
            &Name::from_str(name).unwrap(),
            t,
            DNSClass::IN,
        )
    }

    fn ips(a: &Answer) -> Vec<IpAddr> {
        a.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn txts(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    fn is_nodata(a: &Answer) -> bool {
        a.code == ResponseCode::NoError
            && a.authoritative
            && a.answers.is_empty()
            && matches!(a.authority.as_slice(), [r] if r.record_type() == RecordType::SOA)
    }

    #[test]
    fn in_zone_name_servers_answer_their_own_addresses_when_given() {
        let with = zone(
            "ns_names = [\"ns1.apps.example.com\", \"ns.other.example.net\"]\n\
             ns_addrs = [\"198.51.100.53\", \"2001:db8::53\"]\n",
        );
        let a = ask(&with, "NS1.apps.example.com.", RecordType::A);
        assert_eq!(ips(&a), ["198.51.100.53".parse::<IpAddr>().unwrap()]);
        let aaaa = ask(&with, "ns1.apps.example.com.", RecordType::AAAA);
        assert_eq!(ips(&aaaa), ["2001:db8::53".parse::<IpAddr>().unwrap()]);
        assert!(is_nodata(&ask(
            &with,
            "ns1.apps.example.com.",
            RecordType::TXT
        )));
        // Other hosts still get the gateways; the out-of-zone NS name is refused.
        let host = ask(&with, "ns2.apps.example.com.", RecordType::A);
        assert_eq!(ips(&host)[0], "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            ask(&with, "ns.other.example.net.", RecordType::A).code,
            ResponseCode::Refused
        );
        // Without ns_addrs the wildcard covers the name-server name, as before.
        let without = zone("ns_names = [\"ns1.apps.example.com\"]\n");
        let a = ask(&without, "ns1.apps.example.com.", RecordType::A);
        assert_eq!(ips(&a)[0], "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn wildcard_answers_any_host_depth_with_the_question_as_owner() {
        let z = zone("");
        for name in [
            "0123456789abcdef0123456789abcdef01234567.apps.example.com.",
            "a.b.c.apps.example.com.",
            "Mixed-Case.APPS.example.com.",
        ] {
            let a = ask(&z, name, RecordType::A);
            assert_eq!(a.code, ResponseCode::NoError);
            assert!(a.authoritative);
            assert_eq!(
                ips(&a),
                ["192.0.2.1", "192.0.2.2"].map(|s| s.parse::<IpAddr>().unwrap())
            );
            let asked = Name::from_str(name).unwrap();
            assert!(a.answers.iter().all(|r| r.name.eq_case(&asked)), "{name}");
        }
        let a = ask(&z, "x.apps.example.com.", RecordType::AAAA);
        assert_eq!(ips(&a), ["2001:db8::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn apex_answers_soa_ns_and_addresses() {
        let z = zone("");
        let soa = ask(&z, "apps.example.com.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        match &soa.answers[0].data {
            RData::SOA(s) => {
                assert_eq!(s.mname.to_ascii(), "ns1.apps.example.com.");
                assert_eq!(s.rname.to_ascii(), "hostmaster.apps.example.com.");
                assert_eq!(s.serial, 1);
            }
            other => panic!("{other:?}"),
        }
        let ns = ask(&z, "apps.example.com.", RecordType::NS);
        assert_eq!(ns.answers.len(), 1);
        assert_eq!(ips(&ask(&z, "apps.example.com.", RecordType::A)).len(), 2);
    }

    #[test]
    fn outside_the_zone_is_refused_without_authority() {
        let z = zone("");
        for name in [
            "example.com.",
            "www.example.org.",
            "xapps.example.com.",
            ".",
        ] {
            let a = ask(&z, name, RecordType::A);
            assert_eq!(a.code, ResponseCode::Refused, "{name}");
            assert!(!a.authoritative);
            assert!(a.answers.is_empty() && a.authority.is_empty());
        }
    }

    #[test]
    fn other_types_in_the_zone_are_nodata() {
        let z = zone("");
        assert!(is_nodata(&ask(&z, "x.apps.example.com.", RecordType::MX)));
        assert!(is_nodata(&ask(&z, "x.apps.example.com.", RecordType::TXT)));
        assert!(is_nodata(&ask(&z, "apps.example.com.", RecordType::TXT)));
        // No account yet: no CAA records.
        assert!(is_nodata(&ask(&z, "apps.example.com.", RecordType::CAA)));
        // The negative TTL is the lesser of the TTL and the SOA minimum.
        let a = ask(&z, "x.apps.example.com.", RecordType::MX);
        assert_eq!(a.authority[0].ttl, 60);
    }

    #[test]
    fn no_gateway_addresses_is_nodata() {
        let z = zone("");
        z.set_gateway_addrs(Vec::new()).unwrap();
        assert!(is_nodata(&ask(&z, "x.apps.example.com.", RecordType::A)));
    }

    #[test]
    fn challenge_txt_follows_set_and_clear() {
        let z = zone("");
        let name = "_acme-challenge.apps.example.com.";
        assert!(is_nodata(&ask(&z, name, RecordType::TXT)));
        z.set_acme_txt(
            "_acme-challenge.apps.example.com",
            vec!["v1".into(), "v2".into()],
        )
        .unwrap();
        assert_eq!(txts(&ask(&z, name, RecordType::TXT)), ["v1", "v2"]);
        // A challenge name has no addresses, though the wildcard would match it.
        assert!(is_nodata(&ask(&z, name, RecordType::A)));
        z.set_acme_txt("_ACME-challenge.x.apps.example.com.", vec!["sub".into()])
            .unwrap();
        assert_eq!(
            txts(&ask(
                &z,
                "_acme-challenge.x.apps.example.com.",
                RecordType::TXT
            )),
            ["sub"]
        );
        assert!(z.clear_acme_txt(name).unwrap());
        assert!(!z.clear_acme_txt(name).unwrap());
        assert!(is_nodata(&ask(&z, name, RecordType::TXT)));
    }

    #[test]
    fn underscore_names_other_than_challenges_do_not_exist() {
        let z = zone("");
        for name in [
            "_dmarc.apps.example.com.",
            "_tcp.x.apps.example.com.",
            "a._acme-challenge.apps.example.com.",
            "_acme-challenge._x.apps.example.com.",
        ] {
            let a = ask(&z, name, RecordType::TXT);
            assert_eq!(a.code, ResponseCode::NXDomain, "{name}");
            assert!(a.authoritative);
            assert_eq!(a.authority.len(), 1);
        }
    }

    #[test]
    fn caa_pins_the_account_once_set() {
        let z = zone("caa_issuer = \"ca.example.net\"");
        z.set_caa_account("https://ca.example.net/acct/42").unwrap();
        let a = ask(&z, "apps.example.com.", RecordType::CAA);
        let got: Vec<(String, String)> = a
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(c) => Some((c.tag.clone(), String::from_utf8(c.value.clone()).unwrap())),
                _ => None,
            })
            .collect();
        let value =
            "ca.example.net; accounturi=https://ca.example.net/acct/42; validationmethods=dns-01";
        assert_eq!(
            got,
            [
                ("issue".to_owned(), value.to_owned()),
                ("issuewild".to_owned(), value.to_owned())
            ]
        );
        // CAA lives at the apex only; CAs climb the tree to it.
        assert!(is_nodata(&ask(&z, "x.apps.example.com.", RecordType::CAA)));
        z.clear_caa_account();
        assert!(is_nodata(&ask(&z, "apps.example.com.", RecordType::CAA)));
    }

    #[test]
    fn caa_account_from_config_is_served_at_start() {
        let z = zone("caa_account_uri = \"https://acme.example/acct/7\"");
        assert_eq!(
            ask(&z, "apps.example.com.", RecordType::CAA).answers.len(),
            2
        );
    }

    #[test]
    fn transfers_and_other_classes_are_refused() {
        let z = zone("");
        assert_eq!(
            ask(&z, "apps.example.com.", RecordType::AXFR).code,
            ResponseCode::Refused
        );
        let a = answer(
            z.fixed(),
            &z.snapshot(),
            &Name::from_str("apps.example.com.").unwrap(),
            RecordType::SOA,
            DNSClass::CH,
        );
        assert_eq!(a.code, ResponseCode::Refused);
    }

    #[test]
    fn every_change_bumps_the_serial() {
        let z = zone("");
        let s0 = z.view().serial;
        z.set_gateway_addrs(vec!["192.0.2.9".parse().unwrap()])
            .unwrap();
        z.set_acme_txt("_acme-challenge.apps.example.com", vec!["t".into()])
            .unwrap();
        z.set_caa_account("https://a.example/acct/1").unwrap();
        let view = z.view();
        assert_eq!(view.serial, s0 + 3);
        match &ask(&z, "apps.example.com.", RecordType::SOA).answers[0].data {
            RData::SOA(s) => assert_eq!(s.serial, s0 + 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            view.acme_challenges["_acme-challenge.apps.example.com"],
            ["t"]
        );
    }

    #[test]
    fn bad_updates_are_rejected_and_change_nothing() {
        let z = zone("");
        let before = z.view();
        assert!(z
            .set_acme_txt("www.apps.example.com", vec!["v".into()])
            .is_err());
        assert!(z
            .set_acme_txt("_acme-challenge.example.org", vec!["v".into()])
            .is_err());
        assert!(z
            .set_acme_txt("_acme-challenge.apps.example.com", vec!["has space".into()])
            .is_err());
        assert!(z
            .set_acme_txt("_acme-challenge.apps.example.com", vec!["".into()])
            .is_err());
        assert!(z
            .set_acme_txt("_acme-challenge.apps.example.com", vec!["v".into(); 9])
            .is_err());
        assert!(z
            .set_acme_txt("_acme-challenge.apps.example.com", vec!["x".repeat(256)])
            .is_err());
        assert!(z
            .set_gateway_addrs(vec!["0.0.0.0".parse().unwrap()])
            .is_err());
        assert!(z
            .set_gateway_addrs(vec!["192.0.2.1".parse().unwrap(); 65])
            .is_err());
        assert!(z.set_caa_account("http://a.example/acct/1").is_err());
        assert!(z.set_caa_account("https://a.example/acct/1;x").is_err());
        assert_eq!(z.view(), before);
    }

    #[test]
    fn the_number_of_challenge_names_is_bounded() {
        let z = zone("");
        for i in 0..crate::api::MAX_CHALLENGE_NAMES {
            z.set_acme_txt(
                &format!("_acme-challenge.h{i}.apps.example.com"),
                vec!["v".into()],
            )
            .unwrap();
        }
        assert!(z
            .set_acme_txt(
                "_acme-challenge.one-more.apps.example.com",
                vec!["v".into()]
            )
            .is_err());
        // Replacing an existing name still works.
        z.set_acme_txt("_acme-challenge.h0.apps.example.com", vec!["w".into()])
            .unwrap();
    }
}
