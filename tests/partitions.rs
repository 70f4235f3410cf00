//! Partitions between real hosts. Gateway replicas, etcd members, `teegate dns` and CVMs
//! (real sidecars with simulated TDX) run as separate Docker containers on private
//! networks (`support::lab`): clients reach the replicas on a front network, the replicas
//! reach etcd on a back network and the CVMs on CVM networks. One host at a time is cut off
//! one network with `docker network disconnect` while client loops run throughout, and put
//! back at the same address.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::{get, metric, replica_clients, wait_for_dns};
use support::lab_client::*;
use support::lab_hosts::*;
use support::{http_get_at, identity, ratls_cert, BASE};

/// The tests here run one at a time: each starts a handful of hosts, and the machine is
/// small. Their timing assertions mean more without a neighbour competing for the cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn app_host(app: &ratls::AppId) -> String {
    format!("{app}.{BASE}")
}

fn app_of(app: &str) -> ratls::AppId {
    ratls::ComposeHash::of(compose(app).as_bytes()).default_app_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_cut_off_from_etcd_refuses_registrations_serves_what_it_has_and_rejoins() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path(), 3, 1).await;
    let (lab, front, back, cvm_net) = (&site.lab, &site.front, &site.back, &site.cvm[0]);
    let (dns, replicas) = tokio::join!(
        dns(lab, front, back, &site.endpoints),
        site.replicas(3, 3, "")
    );
    let (r1, r2, r3) = (&replicas[0], &replicas[1], &replicas[2]);
    let a1 = cvm(lab, "a1", 41, cvm_net, "app-a", &[r1, r2, r3]).await;
    let (host_a, host_b) = (app_host(&a1.app_id), app_host(&app_of("app-b")));
    let clients = replica_clients(
        &site.ca_pem,
        &[host_a.clone(), host_b.clone()],
        &[r1.https, r2.https, r3.https],
    );
    let client = |r: &Replica| clients[&IpAddr::V4(r.ip)].clone();
    let probe = ratls_cert(&identity(b"partitions: probe registration", 9));
    // Registrations are judged, not served: the probe's front need not exist.
    let probe_front = SocketAddr::from((cvm_net.ip(99), 8443));

    wait_for_dns(dns.udp, &host_a, Duration::from_secs(20), |a| {
        a == ips(&[r1, r2, r3])
    })
    .await;
    for r in &replicas {
        wait_served(
            &client(r),
            &host_a,
            Duration::from_secs(20),
            |s, b| s == 200 && b.starts_with("instance=a1"),
            "A, registered by its sidecar at every replica",
            &[&r.host, &a1.host],
        )
        .await;
    }
    let through: Vec<reqwest::Client> = replicas.iter().map(client).collect();
    let loads = Loads::start(&through, &host_a).await;

    // r1 loses etcd; its clients and its CVM still reach it.
    lab.disconnect(&r1.host, back).await;
    let cut = Instant::now();
    let at_cut = loads.oks();
    wait_metric(r1, "teegate_store_up", 0.0, Duration::from_secs(15)).await;
    eprintln!(
        "r1 reports the store down {:?} after the cut",
        cut.elapsed()
    );
    // The outage is logged (the line reaches us through the container's output stream,
    // which may trail the metric).
    r1.host
        .wait_for_line("etcd unreachable", Duration::from_secs(10))
        .await;
    // Within its 3 s lease, and etcd's expiry check; more on a busy machine.
    let (answer, when) = wait_for_dns(dns.udp, &host_a, Duration::from_secs(15), |a| {
        !a.contains(&IpAddr::V4(r1.ip))
    })
    .await;
    eprintln!(
        "DNS dropped r1 {:?} after the cut (replica lease 3 s): {answer:?}",
        when - cut
    );
    assert_eq!(answer, ips(&[r2, r3]));

    let asked = Instant::now();
    let (s, body) = probe_register(r1, &site.ca_pem, &probe, probe_front).await;
    eprintln!(
        "r1 refused a registration in {:?}: {s} {body}",
        asked.elapsed()
    );
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("etcd") && body.contains("store"),
        "the refusal names the store: {body}"
    );
    assert!(
        metric(
            &metrics(r1).await,
            "teegate_registrations_total{result=\"store\"}"
        ) >= 1.0
    );
    let (s, body) = listed_replicas(r1)
        .await
        .expect_err("r1 cannot list replicas");
    assert!(s == 503 && body.contains("etcd"), "{s} {body}");
    assert_eq!(listed_replicas(r2).await.unwrap(), ips(&[r2, r3]));
    // The sidecar's renewals at r1 are refused the same way (and go on at the others).
    a1.host
        .wait_for_line("refused the registration (503)", Duration::from_secs(10))
        .await;

    // Meanwhile the others take registrations: B registers with r2 and r3 only.
    let b = cvm(lab, "b", 42, cvm_net, "app-b", &[r2, r3]).await;
    for r in [r2, r3] {
        wait_served(
            &client(r),
            &host_b,
            Duration::from_secs(15),
            |s, body| s == 200 && body.starts_with("instance=b"),
            "B at the replicas that still have etcd",
            &[&r.host, &b.host],
        )
        .await;
    }
    let (s, _) = get(&client(r1), &host_b).await.unwrap();
    assert_eq!(s, 404, "r1 cannot know B while cut off");
    let (s, body) = get(&client(r1), &host_a).await.unwrap();
    assert!(
        s == 200 && body.starts_with("instance=a1"),
        "r1 still serves A: {s} {body}"
    );

    lab.connect(&r1.host, back).await;
    let rejoined = Instant::now();
    let at_rejoin = loads.oks();
    let took = wait_metric(r1, "teegate_store_up", 1.0, Duration::from_secs(15)).await;
    eprintln!("r1 reports the store up {took:?} after the link returned");
    let took = wait_served(
        &client(r1),
        &host_b,
        Duration::from_secs(15),
        |s, body| s == 200 && body.starts_with("instance=b"),
        "r1 catches up on B",
        &[&r1.host],
    )
    .await;
    eprintln!(
        "r1 serves B (registered elsewhere during the cut) {:?} after the link returned",
        rejoined.elapsed().min(took + rejoined.elapsed() - took)
    );
    let took = registers_within(
        r1,
        &site.ca_pem,
        &probe,
        probe_front,
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "r1 takes registrations again {:?} after the link returned (took {took:?}, retries included)",
        rejoined.elapsed()
    );
    let (_, when) = wait_for_dns(dns.udp, &host_a, Duration::from_secs(10), |a| {
        a == ips(&[r1, r2, r3])
    })
    .await;
    eprintln!(
        "DNS offers r1 again {:?} after the link returned",
        when - rejoined
    );
    let listed = lists_replicas_within(r1, &ips(&[r1, r2, r3]), Duration::from_secs(10)).await;
    eprintln!(
        "r1 lists all three replicas {:?} after the link returned (waited {listed:?})",
        rejoined.elapsed()
    );

    for i in 0..3 {
        assert!(at_rejoin[i] > at_cut[i], "r{} served during the cut", i + 1);
    }
    loads
        .stop(
            &["loop on r1 (A)", "loop on r2 (A)", "loop on r3 (A)"],
            &[&r1.host, &r2.host, &r3.host, &a1.host],
        )
        .await;
    drop(b);
}

/// The replica lease of the etcd member test: the default. A member that goes silent is
/// noticed by the etcd client's keep-alive (2 s + 2 s) only, so a renewal stuck on it moves
/// to another member after up to about 4 s; the lease must outlast that (docs/replicas.md).
const REPLICA_LEASE_SECS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_cut_off_keeps_quorum_and_the_replicas_keep_working() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path(), 3, 1).await;
    let (lab, front, back, cvm_net) = (&site.lab, &site.front, &site.back, &site.cvm[0]);
    let (dns, replicas) = tokio::join!(
        dns(lab, front, back, &site.endpoints),
        site.replicas(2, REPLICA_LEASE_SECS, "")
    );
    let (r1, r2) = (&replicas[0], &replicas[1]);
    let a1 = cvm(lab, "a1", 41, cvm_net, "app-a", &[r1, r2]).await;
    let host_a = app_host(&a1.app_id);
    let clients = replica_clients(
        &site.ca_pem,
        std::slice::from_ref(&host_a),
        &[r1.https, r2.https],
    );
    let client = |r: &Replica| clients[&IpAddr::V4(r.ip)].clone();
    for r in &replicas {
        wait_served(
            &client(r),
            &host_a,
            Duration::from_secs(20),
            |s, b| s == 200 && b.starts_with("instance=a1"),
            "A at each replica",
            &[&r.host, &a1.host],
        )
        .await;
    }
    wait_for_dns(dns.udp, &host_a, Duration::from_secs(10), |a| {
        a == ips(&[r1, r2])
    })
    .await;
    let through: Vec<reqwest::Client> = replicas.iter().map(client).collect();
    let loads = Loads::start(&through, &host_a).await;

    // Cut off the leader: the other two must elect one of themselves.
    let members: Vec<&support::lab::Host> = site.etcd.iter().collect();
    let led = leader(&members, back, Duration::from_secs(15))
        .await
        .expect("the cluster has a leader");
    let cut_member = members[led];
    let rest: Vec<&support::lab::Host> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != led)
        .map(|(_, m)| *m)
        .collect();
    lab.disconnect(cut_member, back).await;
    let cut = Instant::now();
    // DNS answers sampled through the cut: the replicas never leave it.
    let sampling = Arc::new(AtomicBool::new(false));
    let dns_answers = {
        let (sampling, host) = (sampling.clone(), host_a.clone());
        let udp = dns.udp;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !sampling.load(Ordering::Relaxed) {
                seen.push(support::etcd::dns_a(udp, &host).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let new_leader = leader(&rest, back, Duration::from_secs(15))
        .await
        .expect("a new leader among the other two members");
    eprintln!(
        "{} leads {:?} after its leader {} was cut off",
        rest[new_leader].name,
        cut.elapsed(),
        cut_member.name
    );
    // Registrations go on at both replicas. Until the etcd client drops its silent
    // connection to the cut member (by its keep-alive: 2 s, then 2 s for the answer), a
    // call that lands there fails after waiting and the registration is refused (a sidecar
    // retries). From then on every registration is taken at once: five in a row at each
    // replica, each well inside the 3 s a call stuck on the silent member takes.
    let probe = ratls_cert(&identity(b"partitions: probe registration", 9));
    let probe_front = SocketAddr::from((cvm_net.ip(99), 8443));
    for r in &replicas {
        let took = registers_within(
            r,
            &site.ca_pem,
            &probe,
            probe_front,
            Duration::from_secs(10),
        )
        .await;
        eprintln!(
            "{} took a registration {:?} after the cut (retrying for {took:?})",
            r.host.name,
            cut.elapsed()
        );
    }
    registrations_settle(
        &replicas,
        &site.ca_pem,
        &probe,
        probe_front,
        5,
        Duration::from_secs(2),
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "registrations taken at once at both replicas {:?} after the cut",
        cut.elapsed()
    );
    for r in &replicas {
        wait_metric(r, "teegate_store_up", 1.0, Duration::from_secs(10)).await;
    }
    // A registration at one replica reaches the other through the remaining members.
    let b = ratls_cert(&identity(
        b"partitions: registered during the member cut",
        10,
    ));
    let (s, body) = probe_register(r2, &site.ca_pem, &b, probe_front).await;
    assert_eq!(s, 200, "{body}");
    let b_app = identity(b"partitions: registered during the member cut", 10).app_id;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (s, _) = http_get_at(
            r1.admin,
            &format!("/v1/apps/{b_app}"),
            Some(ADMIN_TOKEN),
            "GET",
        )
        .await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r1 does not learn the registration at r2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    lab.connect(cut_member, back).await;
    let back_at = Instant::now();
    let deadline = back_at + Duration::from_secs(20);
    loop {
        let (ok, out) = etcdctl(&members, back, &["endpoint", "health"]).await;
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster is not whole again: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} healthy again {:?} after its link returned",
        cut_member.name,
        back_at.elapsed()
    );
    sampling.store(true, Ordering::Relaxed);
    let seen = dns_answers.await.unwrap();
    let off: Vec<&Vec<IpAddr>> = seen.iter().filter(|a| **a != ips(&[r1, r2])).collect();
    eprintln!(
        "DNS answered {} times during the cut, {} of them without both replicas",
        seen.len(),
        off.len()
    );
    let lease_lines: Vec<String> = replicas
        .iter()
        .flat_map(|r| {
            r.host
                .log()
                .lines()
                .filter(|l| l.contains("replica") || l.contains("etcd"))
                .map(|l| format!("{}: {l}", r.host.name))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        off.is_empty(),
        "DNS lost a replica: {off:?}\n{}",
        lease_lines.join("\n")
    );

    loads
        .stop(
            &["loop on r1 (A)", "loop on r2 (A)"],
            &[&r1.host, &r2.host, &a1.host],
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cvm_cut_off_from_one_replica_is_routed_around_there_and_served_by_the_others() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Each CVM on a network of its own, shared with both replicas.
    let site = site(dir.path(), 1, 2).await;
    let lab = &site.lab;
    // A connect to the cut-off CVM gives up after 500 ms and tries the other instance; a
    // request caught in flight on a connection to it is retried after 2 s.
    let replicas = site
        .replicas(
            2,
            3,
            "[upstream]\nconnect_timeout_ms = 500\ndown_backoff_secs = 2\nretries = 1\n[limits]\nrequest_timeout_secs = 2\n",
        )
        .await;
    let (r1, r2) = (&replicas[0], &replicas[1]);
    let both = [r1, r2];
    let (a1, a2) = tokio::join!(
        cvm(lab, "a1", 41, &site.cvm[0], "app-a", &both),
        cvm(lab, "a2", 42, &site.cvm[1], "app-a", &both)
    );
    assert_eq!(a1.app_id, a2.app_id, "two instances of one app");
    let host_a = app_host(&a1.app_id);
    let clients = replica_clients(
        &site.ca_pem,
        std::slice::from_ref(&host_a),
        &[r1.https, r2.https],
    );
    let client = |r: &Replica| clients[&IpAddr::V4(r.ip)].clone();
    // Both instances are registered and served through both replicas.
    for r in &replicas {
        for who in ["instance=a1", "instance=a2"] {
            wait_served(
                &client(r),
                &host_a,
                Duration::from_secs(20),
                |s, b| s == 200 && b.starts_with(who),
                "each instance through each replica",
                &[&r.host, &a1.host, &a2.host],
            )
            .await;
        }
    }
    let through: Vec<reqwest::Client> = replicas.iter().map(client).collect();
    let loads = Loads::start(&through, &host_a).await;

    // a1 loses its link to r1 only.
    lab.disconnect(&r1.host, &site.cvm[0]).await;
    let cut = Instant::now();
    r1.host
        .wait_for_line(
            "upstream connect failed; instance marked down",
            Duration::from_secs(10),
        )
        .await;
    let noticed = Instant::now();
    eprintln!("r1 marked a1 down {:?} after the cut", cut.elapsed());
    // From now on no answer of a1's can reach r1's loop: one in flight at the cut was
    // lost with the link (and its request retried on a2).
    let (r1_a1, r2_a1) = (
        loads.each[0].from("instance=a1"),
        loads.each[1].from("instance=a1"),
    );
    let mut a2_through_r1 = 0;
    for _ in 0..20 {
        let (s, body) = get(&client(r1), &host_a).await.unwrap();
        assert_eq!(s, 200, "{body}");
        assert!(
            body.starts_with("instance=a2"),
            "r1 cannot reach a1: {body}"
        );
        a2_through_r1 += 1;
    }
    wait_served(
        &client(r2),
        &host_a,
        Duration::from_secs(5),
        |s, b| s == 200 && b.starts_with("instance=a1"),
        "r2 still reaches a1",
        &[&r2.host],
    )
    .await;
    assert!(
        loads.each[1].from("instance=a1") > r2_a1,
        "r2's loop still gets a1"
    );
    assert_eq!(
        loads.each[0].from("instance=a1"),
        r1_a1,
        "r1's loop gets no a1 while cut"
    );
    let m = metrics(r1).await;
    assert!(
        metric(&m, "teegate_upstream_failures_total{reason=\"connect\"}") >= 1.0,
        "{m}"
    );
    // The store is not involved: r1 is fully up, and a1 stays registered everywhere.
    assert_eq!(metric(&m, "teegate_store_up"), 1.0);
    assert_eq!(metric(&m, "teegate_registered_instances"), 2.0);
    eprintln!("r1 served {a2_through_r1} sampled requests from a2 while a1 was cut off from it");

    lab.connect(&r1.host, &site.cvm[0]).await;
    let took = wait_served(
        &client(r1),
        &host_a,
        Duration::from_secs(15),
        |s, b| s == 200 && b.starts_with("instance=a1"),
        "r1 reaches a1 again",
        &[&r1.host, &a1.host],
    )
    .await;
    eprintln!("r1 serves from a1 again {took:?} after the link returned (down back-off 2 s)");

    let loads = loads
        .finish_telling(&[&r1.host, &r2.host, &a1.host, &a2.host])
        .await;
    assert_no_failure("loop on r2 (A)", &loads[1]);
    // Through r1, only a request caught in flight to a1 when the link went silent may fail
    // (at most one per client worker): the fast path's request deadline
    // (limits.request_timeout_secs) ends it with 504 instead of retrying it on a2, as
    // pingora's path did. Every request sent once r1 knew a1 was down was served.
    report("loop on r1 (A)", &loads[0]);
    let caught = loads[0].errors.lock().unwrap().clone();
    assert!(loads[0].failed() <= 2, "through r1: {caught:?}");
    for (sent, what) in &caught {
        assert!(
            *sent < noticed && what.contains("504"),
            "through r1, a request sent {:?} after the cut failed: {what}",
            sent.saturating_duration_since(cut)
        );
    }
}
