//! HTML for the chain-of-trust pages (maud: checked at compile time, escaped by default).
//! No JavaScript; one small stylesheet; a single column that reads on a phone. Classes
//! `verified`, `failed` and `not-checked` mark each link, and `data-step`/`data-role`
//! name it, so the page can be checked by a machine as well as read.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use ratls::Outcome;

use super::model::{AppView, GatewayView, IndexView, InstanceView};

const STYLE: &str = r#"
:root{--ok:#0a7d35;--bad:#b3261e;--muted:#5f6368;--line:#dadce0;--bg:#fff;--fg:#202124;--code:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--ok:#4cc176;--bad:#f28b82;--muted:#9aa0a6;--line:#3c4043;--bg:#131314;--fg:#e8eaed;--code:#1e1f20}}
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:62rem;padding:1rem;background:var(--bg);color:var(--fg)}
h1{font-size:1.5rem;margin:.2rem 0 1rem}h2{font-size:1.2rem;margin:1.8rem 0 .6rem}h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
a{color:inherit;overflow-wrap:anywhere}
code,pre,.hex{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
.hex{word-break:break-all}
pre{background:var(--code);padding:.8rem;overflow-x:auto;border-radius:6px;max-height:28rem}
.banner{background:#fff4e5;color:#663c00;border:1px solid #ffb74d;padding:.6rem .8rem;border-radius:6px;font-weight:600}
@media (prefers-color-scheme:dark){.banner{background:#3a2a00;color:#ffcc80}}
.card{border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:1rem 0}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:600;border:1px solid currentColor;white-space:nowrap}
.verified .badge,.badge.verified{color:var(--ok)}.failed .badge,.badge.failed{color:var(--bad)}.not-checked .badge,.badge.not-checked{color:var(--muted)}
ol.links,ul.links{list-style:none;padding:0;margin:0}
.links li{border-left:4px solid var(--line);padding:.35rem .7rem;margin:.35rem 0}
.links li.verified{border-color:var(--ok)}.links li.failed{border-color:var(--bad)}
.why{overflow-wrap:anywhere}.links .why{color:var(--muted);font-size:.9rem}.links li.failed .why{color:var(--bad)}
table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}
th,td{text-align:left;border-bottom:1px solid var(--line);padding:.3rem .5rem;vertical-align:top}
th{font-weight:600;white-space:nowrap}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}dt{font-weight:600}dd{margin:0;min-width:0}
.muted{color:var(--muted)}
"#;

fn layout(title: &str, simulated: bool, gateway: &GatewayView, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                @if !gateway.attested {
                    p.banner id="gateway-not-attested" { (gateway.note) "." }
                }
                @if simulated {
                    p.banner id="simulated" {
                        "SIMULATED TDX: these quotes are signed by teegate's simulated Intel PKI, for development. They prove nothing about hardware."
                    }
                }
                (body)
                p.muted { small { "teegate gateway · every link re-checked by the gateway's own verifier when this page was made · "
                    a href="?format=json" { "JSON" } } }
            }
        }
    }
}

fn class(o: &Outcome) -> &'static str {
    match o {
        Outcome::Verified { .. } => "verified",
        Outcome::Failed { .. } => "failed",
        Outcome::NotChecked { .. } => "not-checked",
    }
}

fn badge(o: &Outcome) -> Markup {
    html! { span class={"badge " (class(o))} { (o.label()) } }
}

fn verdict_badge(v: &str) -> Markup {
    let c = if v == "verified" {
        "verified"
    } else {
        "failed"
    };
    html! { span class={"badge verdict " (c)} { (v) } }
}

/// Unix seconds as a UTC date a person reads.
fn utc(unix: u64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{unix} (unix)"))
}

fn short(hex: &str) -> String {
    if hex.len() > 16 {
        format!("{}…", &hex[..16])
    } else {
        hex.to_string()
    }
}

pub fn index(v: &IndexView) -> Markup {
    let body = html! {
        h1 { "Chain of trust · " (v.base_domain) }
        p { "Every app below runs in Intel TDX confidential VMs. The chain starts with the gateway that terminated your TLS connection, then, for each app, each instance: the chain from the KMS root CA to the instance's RA-TLS certificate, its TDX quote, the RTMR3 event log replayed step by step, and its compose file." }
        (gateway_section(&v.gateway, &v.base_domain, true))
        h2 { "Apps" }
        @if v.apps.is_empty() {
            p.muted { "No app is registered yet." }
        } @else {
            table id="apps" {
                thead { tr { th { "App" } th { "Instances" } th { "Compose hash" } th { "TCB" } } }
                tbody {
                    @for a in &v.apps {
                        tr.app data-app=(a.app_id) {
                            td { a href={"/apps/" (a.app_id)} { code { (a.app_id) } } br; small { a href=(a.url) { (a.url) } } }
                            td { (a.instances.len())
                                @let down = a.instances.iter().filter(|i| !i.healthy).count();
                                @if down > 0 { " (" (down) " down)" } }
                            td { @for i in &a.instances { code.hex title=(i.compose_hash) { (short(&i.compose_hash)) } br; } }
                            td { @for i in &a.instances { (i.tcb_status) @if i.simulated { " · SIMULATED" } br; } }
                        }
                    }
                }
            }
        }
        @if !v.refused.is_empty() {
            h2 { "Recently refused registrations" }
            p.muted { "Certificates that failed verification. The app id is what the certificate claims, not a verified fact." }
            ul.links id="refused" {
                @for r in &v.refused {
                    li.failed {
                        a href={"/apps/" (r.claimed_app_id)} { code { (short(&r.claimed_app_id)) } }
                        " instance " code { (short(&r.claimed_instance_id)) }
                        " · " (r.attempts) " attempt(s)"
                        div.why { (r.error) }
                    }
                }
            }
        }
    };
    layout(
        &format!("Chain of trust · {}", v.base_domain),
        v.simulated,
        &v.gateway,
        body,
    )
}

pub fn app(v: &AppView) -> Markup {
    let body = html! {
        p { a href="/" { "← all apps" } }
        h1 { "App " code.hex { (v.app_id) } }
        p { "Served at " a href=(v.url) { (v.url) } }
        (gateway_section(&v.gateway, &v.base_domain, false))
        h2 { "Instances" }
        @if v.instances.is_empty() {
            p.muted { "No instance is registered now." }
        }
        @for i in &v.instances { (instance(i)) }
        @if !v.refused.is_empty() {
            h2 { "Refused registrations claiming this app" }
            p.muted { "These certificates were refused; the failing link says why." }
            @for i in &v.refused { (instance(i)) }
        }
    };
    layout(&format!("App {}", v.app_id), v.simulated, &v.gateway, body)
}

/// The first link: the gateway that terminated the browser's TLS. `full` adds the quote,
/// the bound keys and the event log (the index); app pages show the verdict and binding.
fn gateway_section(g: &GatewayView, base: &str, full: bool) -> Markup {
    if !g.attested {
        return html! {
            section.card.gateway id="gateway" data-attested="false" data-verdict=(g.verdict) {
                h2 { "The gateway that terminated your connection " span.badge.failed { "not attested" } }
                p.failed.why { (g.note) "." }
                p.muted { small { "Its evidence document says so too: " a href=(g.evidence_path) { code { (g.evidence_path) } } } }
            }
        };
    }
    html! {
        section.card.gateway id="gateway" data-attested="true" data-verdict=(g.verdict) {
            h2 { "The gateway that terminated your connection " (verdict_badge(g.verdict))
                @if g.simulated { " " span.badge { "SIMULATED TDX" } } }
            p { (g.note) "." }
            @if let Some(e) = &g.error { p.failed.why { strong { "Why: " } (e) } }
            @if let Some(e) = &g.requote_error { p.failed.why { strong { "The last re-quote failed: " } (e) " (the evidence below is older)" } }
            ol.links.chain.gateway-chain {
                @if let Some(c) = &g.served {
                    li class=(if c.bound { "verified" } else { "failed" }) data-role="served certificate" {
                        strong { "Certificate served for " (c.name) } " "
                        span class={"badge " (if c.bound { "verified" } else { "failed" })} { @if c.bound { "bound" } @else { "not bound" } }
                        div.hex { small { "SHA-256 " (c.fingerprint.to_hex()) " (the fingerprint your browser shows)" } }
                        div.hex { small { "key SHA-256 " (c.spki_sha256.to_hex()) } }
                        div.why { @if c.bound { "its key is one of the " (g.keys.len()) " the gateway's quote binds" } @else { "its key is NOT one the gateway's quote binds" } }
                    }
                }
                li class=(if g.verdict == "verified" { "verified" } else { "failed" }) data-role="gateway evidence" {
                    strong { "Gateway quote and event log" } " " (verdict_badge(g.verdict))
                    div { small { "app " code.hex { (g.app_id.clone().unwrap_or_default()) } " · compose " code.hex { (short(&g.compose_hash.clone().unwrap_or_default())) } } }
                    div.why { "quoted " (g.issued_at.map(utc).unwrap_or_default()) " · " a href=(g.evidence_path) { "evidence (JSON)" } }
                }
                li.verified data-role="instances" {
                    strong { "Each app instance, over RA-TLS" }
                    div.why { "the gateway routes only to instances whose certificate verified; their chains follow" }
                }
            }
            @if full {
                h3 { "Verification of the gateway's evidence" }
                ol.links.checks {
                    @for c in &g.checks {
                        li class=(class(&c.outcome)) data-step=(c.step.as_str()) {
                            strong { (c.title) } " " (badge(&c.outcome))
                            div.why { (c.outcome.text()) }
                        }
                    }
                }
                h3 { "Keys the quote binds" }
                table.bound-keys {
                    thead { tr { th { "Role" } th { "Name" } th { "Key SHA-256" } } }
                    tbody {
                        @for k in &g.keys {
                            tr { td { (k.role.as_str()) } td { code { (k.name) } } td.hex { (k.spki_sha256.to_hex()) } }
                        }
                    }
                }
                @if let Some(q) = &g.quote {
                    h3 { "Gateway quote" }
                    dl.quote {
                        dt { "Type" } dd { (q.kind) @if g.simulated { " (SIMULATED)" } }
                        dt { "TCB status" } dd { @match &g.tcb_status { Some(s) => (s), None => span.muted { "unknown" } } }
                        dt { "MRTD" } dd.hex { (q.mrtd.to_hex()) }
                        @for (n, r) in q.rtmrs.iter().enumerate() { dt { "RTMR" (n) } dd.hex { (r.to_hex()) } }
                        dt { "Report data" } dd.hex { (q.report_data.to_hex()) }
                        dt { "Instance id" } dd.hex { (g.instance_id.clone().unwrap_or_default()) }
                        dt { "Compose hash" } dd.hex { (g.compose_hash.clone().unwrap_or_default()) }
                    }
                }
                h3 { "Gateway RTMR3 event log, replayed" }
                table.replay {
                    thead { tr { th { "#" } th { "Event" } th { "Payload" } th { "RTMR3 after" } } }
                    tbody {
                        @for (n, r) in g.event_log.rows.iter().enumerate() {
                            tr {
                                td { (n + 1) }
                                td { code { (r.name) } }
                                td.hex { @match &r.payload_text { Some(t) => (t), None => (r.payload_hex) } }
                                td.hex { (r.rtmr3_after.to_hex()) }
                            }
                        }
                    }
                }
                p.muted { small { "Check it yourself, from the certificate your client receives: " code { "teegate verify https://<app-id>." (base) "/" } } }
            }
        }
    }
}

fn instance(i: &InstanceView) -> Markup {
    let section_class = if i.refused.is_some() {
        "card instance refused"
    } else {
        "card instance"
    };
    html! {
        section class=(section_class) data-instance=(i.instance_id) data-verdict=(i.verdict) {
            h2 { "Instance " code.hex { (short(&i.instance_id)) } " " (verdict_badge(i.verdict))
                @if i.simulated { " " span.badge { "SIMULATED TDX" } } }
            @if let Some(e) = &i.error { p.failed.why { strong { "Why: " } (e) } }
            dl {
                dt { "Instance id" } dd.hex { (i.instance_id) }
                @if let Some(r) = &i.registered {
                    dt { "Lease" } dd { "until " (utc(r.lease_expires_unix)) @if !r.healthy { " · marked down" } }
                    dt { "Ports" } dd { @for (n, p) in r.ports.iter().enumerate() { @if n > 0 { ", " } (p) } }
                }
                @if let Some(r) = &i.refused {
                    dt { "Refused" } dd { (r.attempts) " attempt(s), last at " (utc(r.last_unix)) }
                }
            }

            h3 { "Certificate chain" }
            ol.links.chain {
                @for l in &i.chain {
                    li class=(class(&l.outcome)) data-role=(l.role) {
                        strong { (l.role) } " " (badge(&l.outcome))
                        div { small { (l.subject) } }
                        div.hex { small { "SHA-256 " (l.fingerprint.to_hex()) } }
                        div.why { (l.outcome.text()) }
                    }
                }
            }

            h3 { "Verification steps" }
            ol.links.checks {
                @for c in &i.checks {
                    li class=(class(&c.outcome)) data-step=(c.step.as_str()) {
                        strong { (c.title) } " " (badge(&c.outcome))
                        div.why { (c.outcome.text()) }
                    }
                }
            }

            h3 { "Quote" }
            @if let Some(q) = &i.quote {
                dl.quote {
                    dt { "Type" } dd { (q.kind) @if i.simulated { " (SIMULATED)" } }
                    dt { "TCB status" } dd { @match &i.tcb_status { Some(s) => (s), None => span.muted { "unknown" } }
                        @if !i.advisory_ids.is_empty() { " · advisories: " (i.advisory_ids.join(", ")) } }
                    dt { "Debug TD" } dd { @if q.debug { span.failed { "yes" } } @else { "no" } }
                    dt { "MRTD" } dd.hex { (q.mrtd.to_hex()) }
                    @for (n, r) in q.rtmrs.iter().enumerate() {
                        dt { "RTMR" (n) } dd.hex { (r.to_hex()) }
                    }
                    dt { "Report data" } dd.hex { (q.report_data.to_hex()) }
                    dt { "Binds the certificate key" } dd {
                        @if i.report_data.binds_certificate_key { span.badge.verified { "yes" } }
                        @else { span.badge.failed { "no" } " expected " span.hex { (i.report_data.expected.map(|r| r.to_hex()).unwrap_or_default()) } }
                    }
                }
            } @else {
                p.muted { "The quote could not be decoded." }
            }

            h3 { "RTMR3 event log, replayed" }
            @if i.event_log.rows.is_empty() {
                p.muted { "No event log." }
            } @else {
                table.replay {
                    thead { tr { th { "#" } th { "Event" } th { "Payload" } th { "RTMR3 after" } } }
                    tbody {
                        @for (n, r) in i.event_log.rows.iter().enumerate() {
                            tr {
                                td { (n + 1) }
                                td { code { (r.name) } }
                                td.hex { @match &r.payload_text { Some(t) => (t), None => (r.payload_hex) } }
                                td.hex { (r.rtmr3_after.to_hex()) }
                            }
                        }
                    }
                }
                p.replay-result class=(if i.event_log.matches { "verified" } else { "failed" }) {
                    @if i.event_log.matches {
                        span.badge.verified { "matches" } " the quoted RTMR3"
                    } @else {
                        span.badge.failed { "does not match" } " the quoted RTMR3 "
                        span.hex { (i.event_log.quoted_rtmr3.map(|m| m.to_hex()).unwrap_or_default()) }
                    }
                }
            }

            h3 { "Compose" }
            dl {
                dt { "Compose hash" } dd.hex { (i.compose.compose_hash.clone().unwrap_or_default()) }
                dt { "Images" }
                dd {
                    @if i.compose.images.is_empty() {
                        span.muted { "no image event: no container image was measured" }
                    }
                    @for img in &i.compose.images {
                        @if img.ends_with("(unpinned)") {
                            span.badge.failed { "unpinned" } " "
                        }
                        code.hex { (img) } br;
                    }
                }
                dt { "Storage" }
                dd {
                    @match &i.compose.storage {
                        Some(kind) if kind.starts_with("none") => { span.badge.failed { "not encrypted" } " " (kind) }
                        Some(kind) => { (kind) }
                        None => span.muted { "no storage event" },
                    }
                }
            }
            @match &i.compose.file {
                Some(f) => {
                    p { small.muted { "app-compose.json, as registered; its SHA-256 is the compose hash above (checked at registration)." } }
                    pre.compose { (f) }
                }
                None => p.muted { "The instance did not publish its app-compose.json." },
            }
        }
    }
}
