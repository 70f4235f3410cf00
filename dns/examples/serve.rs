//! Runs the DNS server alone from a config file, until Ctrl-C: the load target for the
//! benchmark (`dnsperf`; see the crate's README section in the issue note) without building
//! the whole `teegate` binary.
//!
//! ```text
//! cargo run --release -p teegate-dns --example serve -- dns.toml
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: serve <dns.toml>")?;
    let cfg: config::DnsConfig = config::load(std::path::Path::new(&path))?;
    let server = teegate_dns::DnsServer::bind(&cfg).await?;
    let at = server.listening();
    eprintln!("udp {} tcp {} api {:?}", at.udp, at.tcp, at.api);
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
