//! Test support (package `tracegate-testkit`, never in the shipped package or image): a Kafka
//! broker for tests and local experiments, hosting librdkafka's mock cluster
//! (`rdkafka::mocking::MockCluster`) in its own process, so the gateway and the writer talk to
//! it over TCP exactly as they would to Kafka. No real Kafka is needed.
//!
//! ```text
//! tracegate-test-broker [--brokers N] [--topic NAME:PARTITIONS]...
//! ```
//! Prints `tracegate-test-broker ready bootstrap=HOST:PORT[,…]` when listening, then reads
//! commands from stdin, one per line, answering `ok <command>` or `error <why>`:
//! `down <broker id>`, `up <broker id>` (broker ids are 1..=N; a down broker keeps its data),
//! `rtt <broker id> <ms>` (delay every response), `topic <name> <partitions>`,
//! `produce-error <error> [count]` (the next `count` (1) Produce requests fail with that error:
//! `out_of_order_sequence_number`, which makes an idempotent producer fail fatally, or
//! `not_leader_for_partition`, a retriable one), `stop`.
//! End of input also stops it. Limits of the mock (docs/kafka.md): data lives in memory, and
//! each partition keeps only its latest ~5 MiB of (compressed) record batches.

use std::io::{BufRead, Write};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

fn usage() -> ! {
    eprintln!("usage: tracegate-test-broker [--brokers N] [--topic NAME:PARTITIONS]...");
    std::process::exit(2);
}

/// `--brokers N` and every `--topic NAME:PARTITIONS`.
fn parse_args() -> (i32, Vec<(String, i32)>) {
    let mut brokers = 1i32;
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--brokers" => {
                brokers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--topic" => {
                let v = args.next().unwrap_or_else(|| usage());
                let (name, parts) = v.rsplit_once(':').unwrap_or_else(|| usage());
                let parts = parts
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage());
                topics.push((name.to_string(), parts));
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    (brokers, topics)
}

fn main() {
    let (brokers, topics) = parse_args();
    let cluster = match MockCluster::new(brokers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tracegate-test-broker: cannot start the mock cluster: {e}");
            std::process::exit(1);
        }
    };
    let replication = brokers.min(3);
    for (name, parts) in &topics {
        if let Err(e) = cluster.create_topic(name, *parts, replication) {
            eprintln!("tracegate-test-broker: cannot create topic {name}: {e}");
            std::process::exit(1);
        }
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "tracegate-test-broker ready bootstrap={}",
            cluster.bootstrap_servers()
        );
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
}

/// Runs one command line: `Ok(true)` to stop, `Ok(false)` to go on, `Err(why)`; `None` for an
/// empty line.
fn command(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
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
