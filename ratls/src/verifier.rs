//! RA-TLS certificate verification: parse → quote signature and TCB status → key binding
//! → event-log replay → app authorisation → policy. The result, [`VerifiedAttestation`], can only be made here,
//! so code that routes traffic cannot be handed an unverified certificate by mistake.
//! The steps after parsing are shared ([`AttestationVerifier::judge`]) with the gateway's
//! own evidence ([`crate::gateway_evidence`]), which is a quote and claims without a
//! certificate: one pipeline, two carriers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::authorise::{AppAuthority, Authorised};
use crate::cert::evidence::{self, ClaimsBuffer};
use crate::cert::{parse_ratls_cert, AppClaims, ParsedRaTlsCert};
use crate::collateral::CollateralSource;
use crate::error::{Reason, Step, VerifyError};
use crate::eventlog::{names, EventLog};
use crate::inspect::{CertFacts, ClaimFacts, Inspection, Outcome, QuoteFacts};
use crate::policy::{Policy, Subject};
use crate::quote::Quote;
use crate::quote_verify::{QuoteVerifier, VerifiedQuote};
use crate::tcb::TcbStatus;
use crate::types::{AppId, ComposeHash, Fingerprint, InstanceId, Measurement, ReportData};

/// What a verified RA-TLS certificate attests. Only [`AttestationVerifier`] constructs it.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedAttestation {
    fingerprint: Fingerprint,
    app_id: AppId,
    compose_hash: ComposeHash,
    instance_id: InstanceId,
    mrtd: Measurement,
    rtmrs: [Measurement; 4],
    report_data: ReportData,
    tcb_status: TcbStatus,
    advisory_ids: Vec<String>,
    simulated: bool,
    event_log: EventLog,
    authorised: Authorised,
    dns_names: Vec<String>,
    not_after: i64,
    /// Unix seconds after which this verdict must be re-checked.
    valid_until: u64,
}

impl VerifiedAttestation {
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }
    pub fn compose_hash(&self) -> &ComposeHash {
        &self.compose_hash
    }
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance_id
    }
    pub fn mrtd(&self) -> &Measurement {
        &self.mrtd
    }
    pub fn rtmrs(&self) -> &[Measurement; 4] {
        &self.rtmrs
    }
    pub fn report_data(&self) -> &ReportData {
        &self.report_data
    }
    pub fn tcb_status(&self) -> TcbStatus {
        self.tcb_status
    }
    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }
    pub fn event_log(&self) -> &EventLog {
        &self.event_log
    }
    /// How the app id was authorised for the compose hash.
    pub fn authorised(&self) -> &Authorised {
        &self.authorised
    }
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
    pub fn valid_until(&self) -> u64 {
        self.valid_until
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies RA-TLS certificates under one policy.
#[derive(Clone)]
pub struct AttestationVerifier {
    quotes: QuoteVerifier,
    policy: Policy,
    authority: AppAuthority,
    fixed_now: Option<u64>,
    expected_nonce: Option<Vec<u8>>,
}

impl AttestationVerifier {
    /// Quotes are checked with collateral from `collateral` (simulated quotes bring their
    /// own) under `policy`'s TCB and simulation rules.
    pub fn new(collateral: Arc<dyn CollateralSource>, policy: Policy) -> Self {
        let quotes = QuoteVerifier::new(collateral, policy.tcb.clone(), policy.allow_simulated);
        Self {
            quotes,
            policy,
            authority: AppAuthority::content_addressed_only(),
            fixed_now: None,
            expected_nonce: None,
        }
    }

    /// Also require the claims buffer to carry this nonce (step `freshness`).
    pub fn expect_nonce(mut self, nonce: Vec<u8>) -> Self {
        self.expected_nonce = Some(nonce);
        self
    }

    /// Who may authorise named app ids (by default nobody: only content-addressed ids).
    pub fn with_authority(mut self, authority: AppAuthority) -> Self {
        self.authority = authority;
        self
    }

    pub fn authority(&self) -> &AppAuthority {
        &self.authority
    }

    /// Verify as if the time were `now` (unix seconds). For tests and offline audits.
    pub fn at_time(mut self, now: u64) -> Self {
        self.fixed_now = Some(now);
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> u64 {
        self.fixed_now.unwrap_or_else(unix_now)
    }

    /// Verifies a DER certificate now, presented alone (so a named app id cannot be
    /// authorised through an app CA: use [`Self::verify_chain`] for that).
    pub fn verify(&self, der: &[u8]) -> Result<VerifiedAttestation, VerifyError> {
        self.verify_at(der, self.now())
    }

    pub fn verify_at(&self, der: &[u8], now: u64) -> Result<VerifiedAttestation, VerifyError> {
        self.inspect_chain_at(der, &[], now).into_verdict()
    }

    /// Verifies a certificate presented with its issuers (app CA first) now.
    pub fn verify_chain(
        &self,
        der: &[u8],
        issuers: &[&[u8]],
    ) -> Result<VerifiedAttestation, VerifyError> {
        self.inspect_chain_at(der, issuers, self.now())
            .into_verdict()
    }

    /// Every step of verifying `der` now, with the values behind each outcome.
    pub fn inspect(&self, der: &[u8]) -> Inspection {
        self.inspect_at(der, self.now())
    }

    /// [`Self::inspect`] of a certificate presented with its issuers.
    pub fn inspect_chain(&self, der: &[u8], issuers: &[&[u8]]) -> Inspection {
        self.inspect_chain_at(der, issuers, self.now())
    }

    pub fn inspect_at(&self, der: &[u8], now: u64) -> Inspection {
        self.inspect_chain_at(der, &[], now)
    }

    /// Runs the verification steps in order. The verdict is the first failure in that
    /// order (so `verify` reports exactly what it always did); later steps still run where
    /// their inputs exist, and are marked not checked where they would prove nothing.
    pub fn inspect_chain_at(&self, der: &[u8], issuers: &[&[u8]], now: u64) -> Inspection {
        let mut run = Run::new(Inspection::new());
        let cert = match parse_ratls_cert(der) {
            Ok(c) => c,
            Err(e) => {
                run.fail(e);
                return run.stop("the certificate did not decode");
            }
        };
        run.ins.fingerprint = Some(cert.fingerprint);
        run.ins.certificate = Some(CertFacts {
            subject: cert.subject.clone(),
            issuer: cert.issuer.clone(),
            self_issued: cert.self_issued,
            not_before: cert.not_before,
            not_after: cert.not_after,
            dns_names: cert.dns_names.clone(),
        });
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        if now_i < cert.not_before || now_i > cert.not_after {
            run.fail(VerifyError::parse(Reason::Certificate(format!(
                "not valid at {now}: valid from {} to {}",
                cert.not_before, cert.not_after
            ))));
        }
        let Some(quote) = run.evidence(&cert.quote, &cert.claims_buffer, &cert.claims) else {
            return run.stop("the quote did not decode");
        };
        run.ins.set(
            Step::Parse,
            Outcome::Verified {
                detail: format!(
                    "valid from {} to {} (unix seconds)",
                    cert.not_before, cert.not_after
                ),
            },
        );
        let judged = self.judge(
            &mut run,
            &Evidence {
                quote: &quote,
                claims_buffer: &cert.claims_buffer,
                claims: &cert.claims,
            },
            |quote| check_key_binding(&cert, quote).map(|()| evidence::key_binding_text()),
            || self.check_authorisation(&cert, der, issuers, now_i),
            now,
        );
        run.finish(judged, |verified, authorised| {
            let not_after = u64::try_from(cert.not_after).unwrap_or(0);
            VerifiedAttestation {
                fingerprint: cert.fingerprint,
                app_id: cert.claims.app_id,
                compose_hash: cert.claims.compose_hash,
                instance_id: cert.claims.instance_id,
                mrtd: verified.quote.mrtd(),
                rtmrs: verified.quote.rtmrs(),
                report_data: verified.quote.report_data(),
                tcb_status: verified.tcb_status,
                advisory_ids: verified.advisory_ids,
                simulated: verified.simulated,
                event_log: cert.claims.event_log,
                authorised,
                dns_names: cert.dns_names,
                not_after: cert.not_after,
                valid_until: not_after.min(verified.collateral_expires),
            }
        })
    }

    /// The steps every kind of evidence shares, after it decoded: quote signature and TCB
    /// status, key binding (`bind`, which says what it verified), freshness, event-log
    /// replay against the claims, app authorisation (`authorise`) and policy. Returns what
    /// they established only when none failed.
    pub(crate) fn judge<V>(
        &self,
        run: &mut Run<V>,
        ev: &Evidence<'_>,
        bind: impl FnOnce(&Quote) -> Result<String, VerifyError>,
        authorise: impl FnOnce() -> Result<Authorised, VerifyError>,
        now: u64,
    ) -> Option<(VerifiedQuote, Authorised)> {
        let verified = match self.quotes.verify(ev.quote.clone(), None, now) {
            Ok(v) => {
                run.ins.simulated = Some(v.simulated);
                run.ins.tcb_status = Some(v.tcb_status);
                run.ins.advisory_ids = v.advisory_ids.clone();
                let anchor = if v.simulated {
                    "SIMULATED: signed by teegate's simulated TDX PKI, accepted because allow_simulated is set"
                } else {
                    "signed by a PCK chain to Intel's SGX root CA"
                };
                run.ins.set(
                    Step::QuoteSignature,
                    Outcome::Verified {
                        detail: anchor.into(),
                    },
                );
                run.ins.set(
                    Step::TcbStatus,
                    Outcome::Verified {
                        detail: format!("TCB status {}", v.tcb_status),
                    },
                );
                Some(v)
            }
            Err(e) => {
                if let Reason::TcbNotAllowed { status, .. } = &e.reason {
                    run.ins.tcb_status = Some(*status);
                }
                if e.step == Step::TcbStatus {
                    run.ins.set(
                        Step::QuoteSignature,
                        Outcome::Verified {
                            detail: "the quote's signature chain checked out".into(),
                        },
                    );
                } else {
                    run.ins.set(
                        Step::TcbStatus,
                        Outcome::NotChecked {
                            why: "the quote's signature did not verify".into(),
                        },
                    );
                }
                run.fail(e);
                None
            }
        };
        let untrusted = "the quote is not trusted, so what it says proves nothing";
        let trusted = verified.is_some();
        let judge = |run: &mut Run<V>, step: Step, r: Result<String, VerifyError>| match r {
            Ok(detail) if trusted => run.ins.set(step, Outcome::Verified { detail }),
            Ok(_) => run.ins.set(
                step,
                Outcome::NotChecked {
                    why: untrusted.into(),
                },
            ),
            Err(e) => run.fail(e),
        };

        judge(run, Step::KeyBinding, bind(ev.quote));
        if let Some(nonce) = &self.expected_nonce {
            run.ins.add_freshness();
            let fresh = crate::fresh::check_freshness(ev.claims_buffer, nonce).map(|()| {
                format!(
                    "the claims buffer carries this client's nonce {}",
                    hex::encode(nonce)
                )
            });
            // Freshness says nothing unless the quote binds the buffer: judged like the rest.
            judge(run, Step::Freshness, fresh);
        }
        let simulated = verified.as_ref().map(|v| v.simulated);
        let replay = check_claims(ev.claims, ev.quote, simulated).map(|()| {
            format!(
                "{} events replay to the quoted RTMR3; compose-hash, app-id and instance-id match the claims",
                ev.claims.event_log.len()
            )
        });
        judge(run, Step::EventLogReplay, replay);

        let authorised = match authorise() {
            Ok(a) if trusted => {
                run.ins.set(
                    Step::AppAuthorisation,
                    Outcome::Verified {
                        detail: a.describe(&ev.claims.app_id),
                    },
                );
                Some(a)
            }
            Ok(_) => {
                run.ins.set(
                    Step::AppAuthorisation,
                    Outcome::NotChecked {
                        why: untrusted.into(),
                    },
                );
                None
            }
            Err(e) => {
                run.fail(e);
                None
            }
        };

        let rtmrs = ev.quote.rtmrs();
        let mrtd = ev.quote.mrtd();
        match self.policy.check(&Subject {
            mrtd: &mrtd,
            rtmrs: &rtmrs,
            compose_hash: &ev.claims.compose_hash,
            app_id: &ev.claims.app_id,
            event_log: &ev.claims.event_log,
        }) {
            Ok(()) => run.ins.set(
                Step::Policy,
                Outcome::Verified {
                    detail: "allowed by this verifier's policy".into(),
                },
            ),
            Err(e) => run.fail(e),
        }
        match (&run.first, verified, authorised) {
            (None, Some(v), Some(a)) => Some((v, a)),
            _ => None,
        }
    }

    fn check_authorisation(
        &self,
        cert: &ParsedRaTlsCert,
        der: &[u8],
        issuers: &[&[u8]],
        now: i64,
    ) -> Result<Authorised, VerifyError> {
        let leaf = x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c)
            .map_err(|e| VerifyError::parse(Reason::Certificate(e.to_string())))?;
        self.authority.check(
            &cert.claims.app_id,
            &cert.claims.compose_hash,
            &leaf,
            issuers,
            now,
        )
    }
}

/// The evidence the shared steps judge, whatever carried it (a certificate, or the
/// gateway's published evidence).
pub(crate) struct Evidence<'a> {
    pub quote: &'a Quote,
    pub claims_buffer: &'a [u8],
    pub claims: &'a AppClaims,
}

/// One verification in progress: the inspection being filled in and its first failure.
pub(crate) struct Run<V> {
    pub ins: Inspection<V>,
    first: Option<VerifyError>,
}

impl<V> Run<V> {
    pub fn new(ins: Inspection<V>) -> Self {
        Self { ins, first: None }
    }

    /// Marks the failed step; the first failure in step order becomes the verdict.
    pub fn fail(&mut self, e: VerifyError) {
        self.ins.set(
            e.step,
            Outcome::Failed {
                reason: e.reason.to_string(),
            },
        );
        self.first.get_or_insert(e);
    }

    /// Records the claims and the replay for display, and decodes the quote (a `parse`
    /// failure when it does not).
    pub fn evidence(
        &mut self,
        quote: &[u8],
        claims_buffer: &[u8],
        claims: &AppClaims,
    ) -> Option<Quote> {
        self.ins.claims = Some(ClaimFacts::from(claims));
        self.ins.replay_from(claims);
        self.ins.expected_report_data = Some(evidence::report_data_for(claims_buffer));
        match Quote::parse(quote) {
            Ok(q) => {
                self.ins.quote = Some(QuoteFacts::from(&q));
                Some(q)
            }
            Err(e) => {
                self.fail(VerifyError::parse(Reason::Quote(e.to_string())));
                None
            }
        }
    }

    /// Ends a verification that could not get past decoding.
    pub fn stop(mut self, why: &str) -> Inspection<V> {
        self.ins.not_checked_from(
            &[
                Step::QuoteSignature,
                Step::TcbStatus,
                Step::KeyBinding,
                Step::EventLogReplay,
                Step::AppAuthorisation,
                Step::Policy,
            ],
            why,
        );
        self.ins.verdict = Err(self.first.take().unwrap_or_else(unreachable_parse));
        self.ins
    }

    /// Sets the verdict: the first failure, or `make` of what the steps established.
    pub fn finish(
        mut self,
        judged: Option<(VerifiedQuote, Authorised)>,
        make: impl FnOnce(VerifiedQuote, Authorised) -> V,
    ) -> Inspection<V> {
        self.ins.verdict = match (self.first.take(), judged) {
            (Some(e), _) => Err(e),
            (None, Some((v, a))) => Ok(make(v, a)),
            (None, None) => Err(unreachable_parse()),
        };
        self.ins
    }
}

/// Only reachable if a step failed without saying so; kept as an error, never a panic.
fn unreachable_parse() -> VerifyError {
    VerifyError::new(
        Step::QuoteSignature,
        Reason::Quote("verification ended without a verdict".into()),
    )
}

fn check_key_binding(cert: &ParsedRaTlsCert, quote: &Quote) -> Result<(), VerifyError> {
    let fail = |r: Reason| VerifyError::new(Step::KeyBinding, r);
    let claims =
        ClaimsBuffer::parse(&cert.claims_buffer).map_err(|e| fail(Reason::Evidence(e.0)))?;
    let expected = claims.hash_alg.digest(&cert.spki_der);
    if expected != claims.pubkey_hash {
        return Err(fail(Reason::PubkeyHashMismatch {
            expected: hex::encode(expected),
            found: hex::encode(&claims.pubkey_hash),
        }));
    }
    check_report_data(&cert.claims_buffer, quote)
}

/// The quote's report data is the hash of this claims buffer (step `key-binding`).
pub(crate) fn check_report_data(claims_buffer: &[u8], quote: &Quote) -> Result<(), VerifyError> {
    let expected_rd = evidence::report_data_for(claims_buffer);
    if expected_rd != quote.report_data() {
        return Err(VerifyError::new(
            Step::KeyBinding,
            Reason::ReportDataMismatch {
                expected: expected_rd.to_hex(),
                found: quote.report_data().to_hex(),
            },
        ));
    }
    Ok(())
}

fn check_claims(
    claims: &AppClaims,
    quote: &Quote,
    simulated: Option<bool>,
) -> Result<(), VerifyError> {
    if let Some(actual) = simulated {
        if claims.simulated != actual {
            return Err(VerifyError::new(
                Step::QuoteSignature,
                Reason::SimulatedFlagMismatch {
                    claimed: claims.simulated,
                    actual: if actual { "simulated" } else { "real TDX" },
                },
            ));
        }
    }
    let replay = |r: Reason| VerifyError::new(Step::EventLogReplay, r);
    let replayed = claims.event_log.replay();
    let quoted = quote.rtmr3();
    if replayed != quoted {
        return Err(replay(Reason::Rtmr3Mismatch { replayed, quoted }));
    }
    let logged = |name: &'static str| -> Result<&[u8], VerifyError> {
        let mut it = claims.event_log.payloads(name);
        match (it.next(), it.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => Err(replay(Reason::EventLog(format!("no {name} event")))),
            (Some(_), Some(_)) => Err(replay(Reason::EventLog(format!(
                "more than one {name} event"
            )))),
        }
    };
    let pairs: [(&'static str, &[u8]); 3] = [
        (names::COMPOSE_HASH, claims.compose_hash.as_bytes()),
        (names::APP_ID, claims.app_id.as_bytes()),
        (names::INSTANCE_ID, claims.instance_id.as_bytes()),
    ];
    for (name, claimed) in pairs {
        let log = logged(name)?;
        if log != claimed {
            return Err(replay(Reason::ClaimMismatch {
                claim: name,
                claimed: hex::encode(claimed),
                logged: hex::encode(log),
            }));
        }
    }
    Ok(())
}
