//! The record API: the token is required and checked, every route changes what DNS answers,
//! bad input is refused with a reason, and the client speaks it.

mod support;

use std::time::Duration;

use hickory_server::proto::rr::{RData, RecordType};
use support::*;
use teegate_dns::api::{challenge_record_name, AcmeDnsClient, ClientError, HttpAcmeDnsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client(s: &Running, token: Option<&str>) -> HttpAcmeDnsClient {
    HttpAcmeDnsClient::new(&s.api_url(), token.map(str::to_owned)).unwrap()
}

/// One raw HTTP/1.1 exchange; returns the status line and the whole answer.
async fn raw(s: &Running, request: &str) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = TcpStream::connect(s.at.api.unwrap()).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("API answers in time")
}

#[tokio::test]
async fn without_or_with_a_wrong_token_nothing_changes() {
    let s = start("").await;
    let name = challenge_record_name(BASE);
    for token in [None, Some("wrong-token-wrong-token-wrong"), Some("")] {
        let c = client(&s, token);
        let e = c.set_txt(&name, vec!["x".into()]).await.unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
        assert!(matches!(
            c.zone().await,
            Err(ClientError::Unauthorized { .. })
        ));
    }
    let answer = raw(
        &s,
        "GET /v1/zone HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Zm9vOmJhcg==\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    assert!(s.zone.view().acme_challenges.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn with_the_token_every_route_changes_the_answers() {
    let s = start("").await;
    let c = client(&s, Some(TOKEN));
    let name = challenge_record_name(&format!("*.{BASE}"));

    c.set_txt(&name, vec!["token-digest".into()]).await.unwrap();
    let m = udp(s.at.udp, &query(&name, RecordType::TXT, true)).await;
    assert_eq!(m.answers.len(), 1);
    let view = c.zone().await.unwrap();
    assert_eq!(view.base_domain, BASE);
    assert_eq!(view.acme_challenges[&name], ["token-digest"]);

    c.clear_txt(&name).await.unwrap();
    c.clear_txt(&name).await.unwrap(); // clearing twice is fine
    let m = udp(s.at.udp, &query(&name, RecordType::TXT, true)).await;
    assert!(m.answers.is_empty());

    c.set_gateway_addrs(vec!["203.0.113.5".parse().unwrap()])
        .await
        .unwrap();
    let m = udp(s.at.udp, &query(&format!("a.{BASE}"), RecordType::A, true)).await;
    assert!(
        matches!(&m.answers[..], [r] if matches!(&r.data, RData::A(a) if a.0.to_string() == "203.0.113.5"))
    );

    c.set_caa_account("https://acme.example/acct/5")
        .await
        .unwrap();
    let m = udp(s.at.udp, &query(BASE, RecordType::CAA, true)).await;
    assert_eq!(m.answers.len(), 2);
    c.clear_caa_account().await.unwrap();
    assert_eq!(c.zone().await.unwrap().caa_account_uri, None);
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let s = start("").await;
    let c = client(&s, Some(TOKEN));
    let e = c
        .set_txt(&format!("www.{BASE}"), vec!["x".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status: 400, message } if message.contains("_acme-challenge")),
        "{e}"
    );
    let e = c
        .set_txt("_acme-challenge.example.org", vec!["x".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status: 400, message } if message.contains("not in the zone")),
        "{e}"
    );
    let e = c
        .set_caa_account("http://insecure.example/acct/1")
        .await
        .unwrap_err();
    assert!(matches!(&e, ClientError::Status { status: 400, .. }), "{e}");

    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let bad_json = format!(
        "PUT /v1/gateway-addrs HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 9\r\nConnection: close\r\n\r\n{{\"addrs\":"
    );
    assert!(raw(&s, &bad_json).await.starts_with("HTTP/1.1 400"));
    let unknown =
        format!("GET /v1/nothing HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    assert!(raw(&s, &unknown).await.starts_with("HTTP/1.1 404"));
    let wrong_method = format!(
        "POST /v1/zone HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert!(raw(&s, &wrong_method).await.starts_with("HTTP/1.1 405"));
    let big = "x".repeat(70_000);
    let too_big = format!(
        "PUT /v1/gateway-addrs HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    assert!(raw(&s, &too_big).await.starts_with("HTTP/1.1 413"));
    s.stop().await;
}

#[tokio::test]
async fn the_zone_handle_is_an_in_process_acme_client() {
    let s = start("").await;
    let client: &dyn AcmeDnsClient = &s.zone;
    let name = challenge_record_name(BASE);
    client
        .set_txt(&name, vec!["in-process".into()])
        .await
        .unwrap();
    let m = tcp(s.at.tcp, &query(&name, RecordType::TXT, true)).await;
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(
        client.set_txt("bad name", vec![]).await,
        Err(ClientError::Rejected(_))
    ));
    s.stop().await;
}

#[tokio::test]
async fn api_without_a_token_does_not_start_even_on_loopback() {
    for listen in ["0.0.0.0:0", "127.0.0.1:0"] {
        let mut cfg = config("");
        cfg.api.token = None;
        cfg.api.listen = listen.parse().unwrap();
        let e = teegate_dns::DnsServer::bind(&cfg)
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("no token"), "{listen}: {e}");
    }
}

#[tokio::test]
async fn a_host_that_is_not_the_api_is_refused_even_with_the_token() {
    let s = start("").await;
    let name = challenge_record_name(BASE);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let body = r#"{"values":["rebound"]}"#;
    for host in [
        "Host: attacker.example\r\n",
        "Host: attacker.example:8053\r\n",
        "Host: localhost.attacker.example\r\n",
        "",
    ] {
        let put = format!(
            "PUT /v1/acme-challenge/{name} HTTP/1.1\r\n{host}{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(&s, &put).await;
        assert!(
            answer.starts_with("HTTP/1.1 421")
                || (host.is_empty() && answer.starts_with("HTTP/1.1 400")),
            "{host:?}: {answer}"
        );
    }
    // An absolute-form target naming another host is refused too.
    let put = format!(
        "PUT http://attacker.example/v1/acme-challenge/{name} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(raw(&s, &put).await.starts_with("HTTP/1.1 421"));
    assert!(s.zone.view().acme_challenges.is_empty());
    // The names the API accepts still work.
    for host in ["localhost:1", &s.at.api.unwrap().to_string()] {
        let put = format!(
            "PUT /v1/acme-challenge/{name} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert!(raw(&s, &put).await.starts_with("HTTP/1.1 204"), "{host}");
    }
    s.stop().await;
}
