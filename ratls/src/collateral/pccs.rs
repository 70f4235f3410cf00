//! A client for a PCCS (or Intel's PCS) speaking the v4 certification API. Used only when
//! a PCCS URL is configured; answers are bounded in size and time.

use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;

use super::{Collateral, CollateralError, CollateralSource, MAX_COLLATERAL_LEN};
use crate::quote::Quote;

/// Fetches collateral from a PCCS base URL such as `https://pccs.example:8081`.
pub struct PccsClient {
    base: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct TcbInfoResponse {
    #[serde(rename = "tcbInfo")]
    tcb_info: Box<serde_json::value::RawValue>,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse {
    #[serde(rename = "enclaveIdentity")]
    enclave_identity: Box<serde_json::value::RawValue>,
    signature: String,
}

struct Fetched {
    body: Vec<u8>,
    issuer_chain: Option<String>,
}

impl PccsClient {
    /// `base_url` is the PCCS root (a trailing `/sgx/certification/v4` is tolerated).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, CollateralError> {
        let base = base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(CollateralError::Pccs(format!(
                "PCCS URL must be http(s): {base_url}"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .build()
            .into();
        Ok(Self { base, agent })
    }

    fn get(&self, path: &str, chain_headers: &[&str]) -> Result<Fetched, CollateralError> {
        let url = format!("{}/{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| CollateralError::Pccs(format!("GET {url}: {e}")))?;
        let issuer_chain = chain_headers
            .iter()
            .find_map(|h| resp.headers().get(*h))
            .and_then(|v| v.to_str().ok())
            .map(url_decode)
            .transpose()?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_COLLATERAL_LEN as u64)
            .read_to_vec()
            .map_err(|e| CollateralError::Pccs(format!("GET {url}: {e}")))?;
        Ok(Fetched { body, issuer_chain })
    }

    /// Fetches the full collateral for one FMSPC and PCK CA (`"platform"`/`"processor"`).
    pub fn fetch(&self, fmspc: &str, ca: &str) -> Result<Collateral, CollateralError> {
        let missing = |what: &str| CollateralError::Pccs(format!("response lacks {what}"));
        let pck_crl = self.get(
            &format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            &["SGX-PCK-CRL-Issuer-Chain"],
        )?;
        let tcb = self.get(
            &format!("tdx/certification/v4/tcb?fmspc={fmspc}"),
            &["SGX-TCB-Info-Issuer-Chain", "TCB-Info-Issuer-Chain"],
        )?;
        let qe = self.get(
            "tdx/certification/v4/qe/identity",
            &["SGX-Enclave-Identity-Issuer-Chain"],
        )?;
        let root_crl = self.get("sgx/certification/v4/rootcacrl", &[])?;
        // A PCCS serves the root CA CRL hex-encoded; Intel's PCS links DER.
        let root_ca_crl = match std::str::from_utf8(&root_crl.body) {
            Ok(text) => hex::decode(text.trim())
                .map_err(|e| CollateralError::Pccs(format!("root CA CRL is not hex: {e}")))?,
            Err(_) => root_crl.body,
        };
        let tcb_resp: TcbInfoResponse = serde_json::from_slice(&tcb.body)
            .map_err(|e| CollateralError::Pccs(format!("TCB info: {e}")))?;
        let qe_resp: QeIdentityResponse = serde_json::from_slice(&qe.body)
            .map_err(|e| CollateralError::Pccs(format!("QE identity: {e}")))?;
        let c = QuoteCollateralV3 {
            pck_crl_issuer_chain: pck_crl
                .issuer_chain
                .ok_or_else(|| missing("SGX-PCK-CRL-Issuer-Chain"))?,
            root_ca_crl,
            pck_crl: pck_crl.body,
            tcb_info_issuer_chain: tcb
                .issuer_chain
                .ok_or_else(|| missing("TCB-Info-Issuer-Chain"))?,
            tcb_info: tcb_resp.tcb_info.get().to_string(),
            tcb_info_signature: hex::decode(&tcb_resp.signature)
                .map_err(|e| CollateralError::Pccs(format!("TCB info signature: {e}")))?,
            qe_identity_issuer_chain: qe
                .issuer_chain
                .ok_or_else(|| missing("SGX-Enclave-Identity-Issuer-Chain"))?,
            qe_identity: qe_resp.enclave_identity.get().to_string(),
            qe_identity_signature: hex::decode(&qe_resp.signature)
                .map_err(|e| CollateralError::Pccs(format!("QE identity signature: {e}")))?,
            pck_certificate_chain: None,
        };
        let c = Collateral(c);
        c.window()?;
        Ok(c)
    }
}

fn url_decode(s: &str) -> Result<String, CollateralError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hexpair = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| CollateralError::Pccs("truncated %-escape".into()))?;
                let text = std::str::from_utf8(hexpair)
                    .map_err(|_| CollateralError::Pccs("bad %-escape".into()))?;
                out.push(
                    u8::from_str_radix(text, 16)
                        .map_err(|_| CollateralError::Pccs("bad %-escape".into()))?,
                );
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| CollateralError::Pccs("issuer chain is not UTF-8".into()))
}

impl CollateralSource for PccsClient {
    fn collateral_for(&self, quote: &Quote, _now: u64) -> Result<Collateral, CollateralError> {
        let fmspc = quote
            .fmspc()
            .map(hex::encode_upper)
            .map_err(|e| CollateralError::Malformed(e.to_string()))?;
        let ca = quote
            .pck_ca()
            .map_err(|e| CollateralError::Malformed(e.to_string()))?;
        self.fetch(&fmspc, ca)
    }

    fn describe(&self) -> String {
        format!("PCCS {}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_handles_escapes_and_rejects_truncation() {
        assert_eq!(url_decode("a%2Db%0A").unwrap(), "a-b\n");
        assert!(url_decode("abc%2").is_err());
        assert!(url_decode("%zz").is_err());
    }

    /// A minimal PCCS on loopback serving the vector collateral the way a PCCS does.
    fn serve_pccs(c: &QuoteCollateralV3) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let enc = |s: &str| s.replace('\n', "%0A").replace(' ', "%20");
        type Route = (&'static str, Vec<(String, String)>, Vec<u8>);
        let routes: Vec<Route> = vec![
            (
                "/sgx/certification/v4/pckcrl",
                vec![(
                    "SGX-PCK-CRL-Issuer-Chain".into(),
                    enc(&c.pck_crl_issuer_chain),
                )],
                c.pck_crl.clone(),
            ),
            (
                "/tdx/certification/v4/tcb",
                vec![(
                    "TCB-Info-Issuer-Chain".into(),
                    enc(&c.tcb_info_issuer_chain),
                )],
                format!(
                    "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                    c.tcb_info,
                    hex::encode(&c.tcb_info_signature)
                )
                .into_bytes(),
            ),
            (
                "/tdx/certification/v4/qe/identity",
                vec![(
                    "SGX-Enclave-Identity-Issuer-Chain".into(),
                    enc(&c.qe_identity_issuer_chain),
                )],
                format!(
                    "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                    c.qe_identity,
                    hex::encode(&c.qe_identity_signature)
                )
                .into_bytes(),
            ),
            (
                "/sgx/certification/v4/rootcacrl",
                vec![],
                hex::encode(&c.root_ca_crl).into_bytes(),
            ),
        ];
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for _ in 0..routes.len() {
                let Ok((mut stream, _)) = listener.accept() else {
                    break;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let route = routes
                    .iter()
                    .find(|(p, _, _)| path.split('?').next() == Some(*p));
                let (status, headers, body) = match route {
                    Some((_, h, b)) => ("200 OK", h.clone(), b.clone()),
                    None => ("404 Not Found", vec![], b"not found".to_vec()),
                };
                let mut head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
                served += 1;
            }
            served
        });
        (base, handle)
    }

    #[test]
    fn fetches_collateral_a_quote_verifies_with() {
        let bytes = super::super::tests::vector("dcap-qvl_tdx_quote_collateral.json");
        let original = Collateral::from_json(&bytes).unwrap();
        let (base, server) = serve_pccs(&original.0);
        let client = PccsClient::new(
            &format!("{base}/sgx/certification/v4"),
            Duration::from_secs(10),
        )
        .unwrap();
        let quote = Quote::parse(&super::super::tests::vector("dcap-qvl_tdx_quote")).unwrap();
        let fetched = client.collateral_for(&quote, 0).unwrap();
        assert_eq!(server.join().unwrap(), 4);
        assert_eq!(fetched, original);
        let v = crate::QuoteVerifier::new(
            std::sync::Arc::new(super::super::FileSource::from_collateral(fetched)),
            crate::TcbPolicy::default(),
            false,
        );
        assert_eq!(
            v.verify(quote, None, 1_750_377_600).unwrap().tcb_status,
            crate::TcbStatus::UpToDate
        );
    }

    #[test]
    fn unreachable_pccs_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = PccsClient::new(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
        let err = client.fetch("B0C06F000000", "platform").unwrap_err();
        assert!(err.to_string().contains("PCCS request failed"), "{err}");
    }

    #[test]
    fn refuses_non_http_urls() {
        assert!(PccsClient::new("ftp://x", Duration::from_secs(1)).is_err());
    }
}
