//! A running server answers over UDP and TCP: wildcard and apex addresses, SOA, NS, TXT after
//! set and clear, CAA once the account is set, REFUSED outside the zone, NODATA and NXDOMAIN
//! where they belong.

mod support;

use std::net::IpAddr;

use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::{RData, RecordType};
use support::*;

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn txts(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn assert_nodata(m: &Message) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty(), "{:?}", m.answers);
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn wildcard_and_apex_answer_the_gateways_over_udp_and_tcp() {
    let s = start("").await;
    let app = format!("0123456789abcdef0123456789abcdef01234567.{BASE}.");
    for (name, edns) in [(app.as_str(), true), (&format!("{BASE}."), false)] {
        let q = query(name, RecordType::A, edns);
        for m in [udp(s.at.udp, &q).await, tcp(s.at.tcp, &q).await] {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative, "AA set");
            assert!(!m.metadata.recursion_available, "RA never set");
            assert_eq!(m.metadata.id, 0x5eed);
            assert_eq!(ips(&m), [ip("192.0.2.10"), ip("192.0.2.11")]);
            assert_eq!(m.answers[0].ttl, 60);
            assert_eq!(m.edns.is_some(), edns, "EDNS answered in kind");
        }
    }
    let m = udp(
        s.at.udp,
        &query(&format!("a-8080s.{BASE}."), RecordType::AAAA, true),
    )
    .await;
    assert_eq!(ips(&m), [ip("2001:db8::10")]);
    s.stop().await;
}

#[tokio::test]
async fn gateway_addresses_change_at_run_time() {
    let s = start("").await;
    s.zone
        .set_gateway_addrs(vec![ip("198.51.100.7"), ip("2001:db8::7")])
        .unwrap();
    let m = udp(s.at.udp, &query(&format!("x.{BASE}."), RecordType::A, true)).await;
    assert_eq!(ips(&m), [ip("198.51.100.7")]);
    s.stop().await;
}

#[tokio::test]
async fn apex_serves_soa_and_ns() {
    let s = start("ns_names = [\"ns1.apps.teegate.test\", \"ns2.example.net\"]").await;
    let m = tcp(s.at.tcp, &query(&format!("{BASE}."), RecordType::SOA, true)).await;
    assert!(m.metadata.authoritative);
    match &m.answers[..] {
        [r] => match &r.data {
            RData::SOA(soa) => {
                assert_eq!(soa.mname.to_ascii(), "ns1.apps.teegate.test.");
                assert_eq!(soa.rname.to_ascii(), "hostmaster.apps.teegate.test.");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let m = udp(s.at.udp, &query(&format!("{BASE}."), RecordType::NS, false)).await;
    let mut ns: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(n) => Some(n.0.to_ascii()),
            _ => None,
        })
        .collect();
    ns.sort();
    assert_eq!(ns, ["ns1.apps.teegate.test.", "ns2.example.net."]);
    s.stop().await;
}

#[tokio::test]
async fn challenge_txt_appears_after_set_and_goes_after_clear() {
    let s = start("").await;
    let name = format!("_acme-challenge.{BASE}.");
    let q = query(&name, RecordType::TXT, true);
    assert_nodata(&udp(s.at.udp, &q).await);
    s.zone
        .set_acme_txt(&name, vec!["digest-one".into(), "digest-two".into()])
        .unwrap();
    for m in [udp(s.at.udp, &q).await, tcp(s.at.tcp, &q).await] {
        let mut got = txts(&m);
        got.sort();
        assert_eq!(got, ["digest-one", "digest-two"]);
        assert!(m.metadata.authoritative);
    }
    // A host's own challenge name works the same way.
    let sub = format!("_acme-challenge.custom.{BASE}");
    s.zone
        .set_acme_txt(&sub, vec!["sub-digest".into()])
        .unwrap();
    let m = udp(s.at.udp, &query(&sub, RecordType::TXT, true)).await;
    assert_eq!(txts(&m), ["sub-digest"]);
    s.zone.clear_acme_txt(&name).unwrap();
    assert_nodata(&udp(s.at.udp, &q).await);
    s.stop().await;
}

#[tokio::test]
async fn caa_pins_the_account_once_it_is_set() {
    let s = start("").await;
    let q = query(&format!("{BASE}."), RecordType::CAA, true);
    assert_nodata(&udp(s.at.udp, &q).await);
    s.zone
        .set_caa_account("https://acme.example/acme/acct/99")
        .unwrap();
    let m = udp(s.at.udp, &q).await;
    let mut got: Vec<(String, String, bool)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CAA(c) => Some((
                c.tag.clone(),
                String::from_utf8_lossy(&c.value).into_owned(),
                c.issuer_critical,
            )),
            _ => None,
        })
        .collect();
    got.sort();
    let v =
        "letsencrypt.org; accounturi=https://acme.example/acme/acct/99; validationmethods=dns-01";
    assert_eq!(
        got,
        [
            ("issue".to_owned(), v.to_owned(), false),
            ("issuewild".to_owned(), v.to_owned(), false)
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn names_outside_the_zone_are_refused() {
    let s = start("").await;
    for name in ["example.com.", "teegate.test.", "www.google.com.", "."] {
        let q = query(name, RecordType::A, true);
        for m in [udp(s.at.udp, &q).await, tcp(s.at.tcp, &q).await] {
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!m.metadata.authoritative);
            assert!(!m.metadata.recursion_available);
            assert!(m.answers.is_empty() && m.authorities.is_empty());
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn nodata_and_nxdomain_cases() {
    let s = start("").await;
    assert_nodata(
        &udp(
            s.at.udp,
            &query(&format!("x.{BASE}."), RecordType::MX, true),
        )
        .await,
    );
    assert_nodata(&udp(s.at.udp, &query(&format!("{BASE}."), RecordType::TXT, true)).await);
    assert_nodata(
        &udp(
            s.at.udp,
            &query(&format!("_acme-challenge.{BASE}."), RecordType::A, true),
        )
        .await,
    );
    let m = udp(
        s.at.udp,
        &query(&format!("_dmarc.{BASE}."), RecordType::TXT, true),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    s.stop().await;
}

#[tokio::test]
async fn zone_transfers_and_other_opcodes_are_refused() {
    let s = start("").await;
    let m = tcp(
        s.at.tcp,
        &query(&format!("{BASE}."), RecordType::AXFR, false),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut q = query(&format!("{BASE}."), RecordType::SOA, false);
    q.metadata.op_code = hickory_server::proto::op::OpCode::Update;
    let m = udp(s.at.udp, &q).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // An EDNS version we do not speak: BADVERS, with our version (0) in the answer.
    let mut q = query(&format!("x.{BASE}."), RecordType::A, true);
    if let Some(e) = q.edns.as_mut() {
        e.set_version(1);
    }
    let m = udp(s.at.udp, &q).await;
    // BADVERS and BADSIG share the code 16; the decoder names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));
    s.stop().await;
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_are_whole_over_tcp() {
    let s = start("").await;
    let many: Vec<IpAddr> = (1..=64).map(|i| ip(&format!("2001:db8::{i:x}"))).collect();
    s.zone.set_gateway_addrs(many).unwrap();
    let q = query(&format!("x.{BASE}."), RecordType::AAAA, false);
    let m = udp(s.at.udp, &q).await;
    assert!(m.metadata.truncation, "TC set without EDNS");
    assert!(m.to_vec().unwrap().len() <= 512);
    let m = tcp(s.at.tcp, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 64);
    s.stop().await;
}
