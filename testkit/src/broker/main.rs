//! Test support (package `tracegate-testkit`, never in the shipped package or image): a Kafka
//! broker for tests and local experiments, hosting librdkafka's mock cluster
//! (`rdkafka::mocking::MockCluster`) in its own process, so the gateway and the writer talk to
//! it over TCP exactly as they would to Kafka. No real Kafka is needed.
//!
//! ```text
//! tracegate-test-broker [--brokers N] [--topic NAME:PARTITIONS]...
//!     [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
//!     [--sasl-user NAME:PASSWORD]... [--sasl-oauthbearer-log FILE]
//! ```
//! With any of the TLS or SASL options each broker is reached through a front (front.rs) that
//! terminates TLS (demanding a client certificate signed by `--tls-client-ca`, if given) and
//! runs SASL: PLAIN and SCRAM-SHA-256/512 for the `--sasl-user`s, OAUTHBEARER with MSK
//! IAM-shaped tokens (each logged to the file, one per line). The bootstrap list is then the
//! fronts'.
//!
//! Prints `tracegate-test-broker ready bootstrap=HOST:PORT[,…]` when listening, then reads
//! commands from stdin, one per line, answering `ok <command>` or `error <why>`:
//! `down <broker id>`, `up <broker id>` (broker ids are 1..=N; a down broker keeps its data),
//! `rtt <broker id> <ms>` (delay every response), `topic <name> <partitions>`,
//! `produce-error <error> [count]` (the next `count` (1) Produce requests fail with that error:
//! `out_of_order_sequence_number`, which makes an idempotent producer fail fatally, or
//! `not_leader_for_partition`, a retriable one), `stop`.
//! End of input also stops it. Limits of the mock (docs/kafka.md): data lives in memory, and
//! each partition keeps only its latest ~5 MiB of (compressed) record batches.

mod front;
mod sasl;

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;

fn usage() -> ! {
    eprintln!(
        "usage: tracegate-test-broker [--brokers N] [--topic NAME:PARTITIONS]... \
         [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--sasl-user NAME:PASSWORD]... \
         [--sasl-oauthbearer-log FILE]"
    );
    std::process::exit(2);
}

#[derive(Default)]
struct Args {
    brokers: i32,
    topics: Vec<(String, i32)>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    users: sasl::Users,
}

fn parse_args() -> Args {
    let mut a = Args {
        brokers: 1,
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--brokers" => {
                a.brokers = value()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--topic" => {
                let v = value();
                let (name, parts) = v.rsplit_once(':').unwrap_or_else(|| usage());
                let parts = parts
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage());
                a.topics.push((name.to_string(), parts));
            }
            "--tls-cert" => a.tls_cert = Some(value().into()),
            "--tls-key" => a.tls_key = Some(value().into()),
            "--tls-client-ca" => a.tls_client_ca = Some(value().into()),
            "--sasl-user" => {
                let v = value();
                let (user, pass) = v.split_once(':').unwrap_or_else(|| usage());
                a.users.passwords.insert(user.into(), pass.into());
            }
            "--sasl-oauthbearer-log" => a.users.oauth_log = Some(value().into()),
            _ => usage(),
        }
    }
    if a.tls_cert.is_some() != a.tls_key.is_some()
        || (a.tls_client_ca.is_some() && a.tls_cert.is_none())
    {
        usage();
    }
    a
}

fn die(what: impl std::fmt::Display) -> ! {
    eprintln!("tracegate-test-broker: {what}");
    std::process::exit(1);
}

/// The fronts' TLS acceptor, from PEM files.
fn tls_acceptor(a: &Args) -> Option<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (a.tls_cert.as_ref()?, a.tls_key.as_ref()?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .unwrap_or_else(|e| die(format!("{}: {e}", cert.display())));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| die(format!("{}: {e}", key.display())));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(e));
    let builder = match &a.tls_client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| die(e)) {
                roots
                    .add(c.unwrap_or_else(|e| die(e)))
                    .unwrap_or_else(|e| die(e));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap_or_else(|e| die(e));
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| die(e));
    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Puts a front before each broker of `cluster` and makes the cluster advertise the fronts;
/// returns their bootstrap list. The runtime serving them is leaked: it lives as long as the
/// process.
fn start_fronts(
    client: &BaseProducer,
    cluster: &MockCluster<'_, DefaultProducerContext>,
    front: front::Front,
) -> String {
    let backends: Vec<SocketAddr> = cluster
        .bootstrap_servers()
        .split(',')
        .map(|b| {
            b.parse()
                .unwrap_or_else(|e| die(format!("mock broker {b}: {e}")))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(e));
    let front = Arc::new(front);
    // SAFETY: the client outlives the process's use of the pointer (it is never dropped
    // before exit); librdkafka locks the cluster in set_host_port.
    let raw =
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr()) };
    let host = CString::new("127.0.0.1").expect("no NUL");
    let mut fronts = Vec::new();
    for (i, backend) in backends.into_iter().enumerate() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(e));
        listener.set_nonblocking(true).unwrap_or_else(|e| die(e));
        let port = listener.local_addr().unwrap_or_else(|e| die(e)).port();
        let f = front.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| die(e));
            front::serve(l, backend, f).await
        });
        // Brokers are numbered from 1 in the order of the mock's bootstrap list.
        // SAFETY: `raw` is the live cluster; `host` is NUL-terminated and copied.
        unsafe {
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                raw,
                i as i32 + 1,
                host.as_ptr(),
                i32::from(port),
            )
        };
        fronts.push(format!("127.0.0.1:{port}"));
    }
    std::mem::forget(rt);
    fronts.join(",")
}

fn main() {
    let args = parse_args();
    let brokers = args.brokers;
    let tls = tls_acceptor(&args);
    let fronted = tls.is_some() || args.users.enabled();
    // With fronts the cluster belongs to a client handle, whose raw pointer the
    // advertised-address call needs (the binding's owned MockCluster does not expose its own).
    let holder: Option<BaseProducer> = fronted.then(|| {
        ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            // Its own metadata would send it through the fronts in plaintext: no refresh.
            .set("topic.metadata.refresh.interval.ms", "-1")
            .create()
            .unwrap_or_else(|e| die(format!("cannot start the mock cluster: {e}")))
    });
    let cluster = match &holder {
        Some(c) => c
            .client()
            .mock_cluster()
            .unwrap_or_else(|| die("the client has no mock cluster")),
        None => MockCluster::new(brokers)
            .unwrap_or_else(|e| die(format!("cannot start the mock cluster: {e}"))),
    };
    let replication = brokers.min(3);
    for (name, parts) in &args.topics {
        if let Err(e) = cluster.create_topic(name, *parts, replication) {
            die(format!("cannot create topic {name}: {e}"));
        }
    }
    let bootstrap = match &holder {
        Some(client) => start_fronts(
            client,
            &cluster,
            front::Front {
                tls,
                users: args.users,
            },
        ),
        None => cluster.bootstrap_servers(),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tracegate-test-broker ready bootstrap={bootstrap}");
        let _ = out.flush();
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let result = match command(&cluster, &line, replication) {
            Some(r) => r,
            None => continue,
        };
        let mut out = std::io::stdout().lock();
        match result {
            Ok(stop) => {
                let _ = writeln!(out, "ok {}", line.trim());
                let _ = out.flush();
                if stop {
                    break;
                }
            }
            Err(e) => {
                let _ = writeln!(out, "error {e}");
                let _ = out.flush();
            }
        }
    }
    drop(cluster);
    drop(holder);
}

/// Runs one command line: `Ok(true)` to stop, `Ok(false)` to go on, `Err(why)`; `None` for an
/// empty line.
fn command(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    line: &str,
    replication: i32,
) -> Option<Result<bool, String>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let id = |i: usize| words.get(i).and_then(|v| v.parse::<i32>().ok());
    Some(match words.as_slice() {
        [] => return None,
        ["stop"] => Ok(true),
        ["down", _] => match id(1) {
            Some(b) => cluster
                .broker_down(b)
                .map(|_| false)
                .map_err(|e| e.to_string()),
            None => Err("usage: down <broker id>".into()),
        },
        ["up", _] => match id(1) {
            Some(b) => cluster
                .broker_up(b)
                .map(|_| false)
                .map_err(|e| e.to_string()),
            None => Err("usage: up <broker id>".into()),
        },
        ["rtt", _, ms] => match (id(1), ms.parse::<u64>()) {
            (Some(b), Ok(ms)) => cluster
                .broker_round_trip_time(b, Duration::from_millis(ms))
                .map(|_| false)
                .map_err(|e| e.to_string()),
            _ => Err("usage: rtt <broker id> <ms>".into()),
        },
        ["produce-error", name] | ["produce-error", name, _] => {
            use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
            let count = words.get(2).map_or(Some(1), |c| c.parse::<usize>().ok());
            let err = match *name {
                "out_of_order_sequence_number" => {
                    Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER)
                }
                "not_leader_for_partition" => {
                    Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION)
                }
                _ => None,
            };
            match (err, count) {
                (Some(e), Some(n)) => {
                    cluster.request_errors(RDKafkaApiKey::Produce, &vec![e; n]);
                    Ok(false)
                }
                _ => Err("usage: produce-error out_of_order_sequence_number|not_leader_for_partition [count]".into()),
            }
        }
        ["topic", name, parts] => match parts.parse::<i32>() {
            Ok(p) if p > 0 => cluster
                .create_topic(name, p, replication)
                .map(|_| false)
                .map_err(|e| e.to_string()),
            _ => Err("usage: topic <name> <partitions>".into()),
        },
        _ => Err(format!("unknown command {line:?}")),
    })
}
