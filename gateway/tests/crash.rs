//! Crash test: SIGKILL the gateway in the middle of an OTLP/HTTP load, restart it on the same
//! data dir and ports, let the clients retry until every request is acknowledged, then check that
//! no acknowledged span is missing from the archive, and none is there twice (retry-safe ingest:
//! the dedup journal survives the kill).
//!
//! The same with a power cut: the kill -9 is followed by taking away every byte and every name
//! the gateway did not fsync (`common::PowerLoss`), as a power cut at that instant could.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Gateway;

const TOTAL_SPANS: u64 = 10_000;
const SPANS_PER_REQUEST: u64 = 50;
const REQUESTS: usize = (TOTAL_SPANS / SPANS_PER_REQUEST) as usize;
const CLIENT_THREADS: usize = 4;
const LOAD_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default, Clone)]
struct RequestState {
    attempts: u32,
    failures: u32,
    /// Got a 200 at least once.
    acked: bool,
    /// Got its 200 before the server was killed.
    acked_before_kill: bool,
    /// Last non-200 status / transport error, for diagnostics.
    last_error: Option<String>,
}

struct Shared {
    queue: Mutex<VecDeque<usize>>,
    state: Mutex<Vec<RequestState>>,
    acked: AtomicUsize,
    killed: AtomicBool,
    stop: AtomicBool,
}

fn span_name(req: usize, j: u64) -> String {
    format!("crash-{req}-{j}")
}

fn seq(req: usize, j: u64) -> u64 {
    req as u64 * SPANS_PER_REQUEST + j
}

fn build_body(req: usize) -> Vec<u8> {
    let spans = (0..SPANS_PER_REQUEST)
        .map(|j| {
            let s = seq(req, j);
            common::span(
                common::trace_id(s / 10),
                common::span_id(s),
                &span_name(req, j),
            )
        })
        .collect();
    common::encode(&common::request_with_spans(spans))
}

fn client_loop(shared: Arc<Shared>, url: String, key: String, bodies: Arc<Vec<Vec<u8>>>) {
    let client = common::http_client_with_timeout(Duration::from_secs(10));
    let auth = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("authorization", auth.as_str()),
    ];
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(i) = shared.queue.lock().unwrap().pop_front() else {
            if shared.acked.load(Ordering::Relaxed) == REQUESTS {
                return;
            }
            // Others hold the remaining requests in flight; they may come back on failure.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let killed_before_send = shared.killed.load(Ordering::SeqCst);
        let result = common::try_post(&client, &url, &headers, bodies[i].clone());
        let mut backoff = None;
        {
            let mut state = shared.state.lock().unwrap();
            let st = &mut state[i];
            st.attempts += 1;
            match result {
                Ok((200, _, _)) => {
                    if !st.acked {
                        st.acked = true;
                        // Only count as "before kill" if the whole exchange happened before it.
                        st.acked_before_kill =
                            !killed_before_send && !shared.killed.load(Ordering::SeqCst);
                        shared.acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok((status, headers, body)) => {
                    st.failures += 1;
                    st.last_error = Some(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ));
                    let retry_after = headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    backoff = Some(
                        retry_after
                            .map(|s| Duration::from_secs(s).min(Duration::from_secs(1)))
                            .unwrap_or(Duration::from_millis(50)),
                    );
                }
                Err(e) => {
                    st.failures += 1;
                    st.last_error = Some(format!("transport error: {e}"));
                    backoff = Some(Duration::from_millis(50));
                }
            }
        }
        if let Some(d) = backoff {
            shared.queue.lock().unwrap().push_back(i);
            thread::sleep(d);
        }
    }
}

#[test]
fn kill9_mid_load_loses_no_acknowledged_span() {
    kill_mid_load(false);
}

#[test]
fn power_loss_mid_load_loses_no_acknowledged_span() {
    kill_mid_load(true);
}

fn kill_mid_load(power_loss: bool) {
    let dir = tempfile::Builder::new()
        .prefix("tracegate-crash-")
        .tempdir()
        .expect("temp data dir");
    let cut = power_loss.then(|| common::PowerLoss::new(dir.path()));
    let env = cut.as_ref().map(|c| c.env()).unwrap_or_default();
    let mut gw = Gateway::start_in(dir.path(), &common::env_refs(&env));
    let project = common::unique_project("crash");
    let key = gw.create_key(&project);
    let http_addr = gw.http.to_string();
    let grpc_addr = gw.grpc.to_string();
    let url = gw.traces_url();

    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..REQUESTS).map(build_body).collect());
    let shared = Arc::new(Shared {
        queue: Mutex::new((0..REQUESTS).collect()),
        state: Mutex::new(vec![RequestState::default(); REQUESTS]),
        acked: AtomicUsize::new(0),
        killed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });

    let start = Instant::now();
    let workers: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (shared, url, key, bodies) =
                (shared.clone(), url.clone(), key.clone(), bodies.clone());
            thread::spawn(move || client_loop(shared, url, key, bodies))
        })
        .collect();

    // Wait for about a third of the load to be acknowledged, then SIGKILL the server.
    let kill_at = REQUESTS / 3;
    let reached = common::wait_until(Duration::from_secs(60), || {
        shared.acked.load(Ordering::SeqCst) >= kill_at || workers.iter().all(|w| w.is_finished())
    });
    let acked_at_kill = shared.acked.load(Ordering::SeqCst);
    if !reached || acked_at_kill >= REQUESTS {
        shared.stop.store(true, Ordering::SeqCst);
        let state = shared.state.lock().unwrap().clone();
        let errors: Vec<_> = state
            .iter()
            .filter_map(|s| s.last_error.clone())
            .take(5)
            .collect();
        panic!(
            "load did not reach {kill_at} acknowledged requests before the kill \
             (acked {acked_at_kill}/{REQUESTS} after {:?}); sample errors: {errors:?}",
            start.elapsed()
        );
    }
    shared.killed.store(true, Ordering::SeqCst);
    gw.kill9();
    let killed_at = start.elapsed();
    eprintln!("[crash] killed after {acked_at_kill} acked requests at {killed_at:?}");
    if let Some(pl) = &cut {
        let lost = pl.cut();
        eprintln!("[crash] power cut: {lost:?}");
        // The journal's done records are never synced: a cut that takes nothing did not cut.
        assert!(lost.bytes_lost > 0, "the power cut took nothing: {lost:?}");
    }
    // Let the clients observe the outage.
    thread::sleep(Duration::from_millis(300));
    let gw = Gateway::start_with_addrs(dir.path(), &http_addr, &grpc_addr, &[]);
    assert_eq!(
        gw.http.to_string(),
        http_addr,
        "restarted on another HTTP address"
    );
    eprintln!("[crash] restarted at {:?}", start.elapsed());

    // Let the clients finish (bounded).
    let done = common::wait_until(LOAD_DEADLINE.saturating_sub(start.elapsed()), || {
        shared.acked.load(Ordering::SeqCst) == REQUESTS
    });
    shared.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("client thread panicked");
    }
    let state = shared.state.lock().unwrap().clone();
    let not_acked: Vec<_> = state
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.acked)
        .map(|(i, s)| (i, s.attempts, s.last_error.clone()))
        .take(10)
        .collect();
    assert!(
        done,
        "not every request was acknowledged within {LOAD_DEADLINE:?} after restart \
         ({} of {REQUESTS} acked); first unacked (index, attempts, last error): {not_acked:?}",
        shared.acked.load(Ordering::SeqCst)
    );
    let total_failures: u32 = state.iter().map(|s| s.failures).sum();
    let retried = state.iter().filter(|s| s.failures > 0).count();
    let acked_before_kill = state.iter().filter(|s| s.acked_before_kill).count();
    eprintln!(
        "[crash] done at {:?}: {retried} requests retried, {total_failures} failed attempts, \
         {acked_before_kill} acked before the kill",
        start.elapsed()
    );
    assert!(
        total_failures > 0,
        "no request failed across the SIGKILL: the test proved nothing"
    );
    assert!(
        acked_before_kill > 0,
        "no request was acknowledged before the kill"
    );

    // Every span of every acknowledged request must be archived.
    let expected = REQUESTS * SPANS_PER_REQUEST as usize;
    let mut records = Vec::new();
    common::wait_until(Duration::from_secs(10), || {
        records = gw.archive_spans(Some(&project));
        records.len() >= expected
    });
    let mut counts: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for r in &records {
        assert_eq!(
            r["project_id"].as_str(),
            Some(project.as_str()),
            "wrong project_id in {r}"
        );
        let name = r["span"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("record without span.name: {r}"))
            .to_string();
        let span_id = r["span"]["spanId"].as_str().unwrap_or_default().to_string();
        let e = counts.entry(name).or_insert((0, span_id));
        e.0 += 1;
    }

    let mut missing_before_kill = Vec::new();
    let mut missing_after_kill = Vec::new();
    let mut bad_dupes = Vec::new();
    let mut bad_ids = Vec::new();
    for (i, st) in state.iter().enumerate() {
        for j in 0..SPANS_PER_REQUEST {
            let name = span_name(i, j);
            match counts.remove(&name) {
                None if st.acked_before_kill => missing_before_kill.push(name),
                None => missing_after_kill.push(name),
                Some((n, span_id)) => {
                    // Retry-safe ingest (`dedup`, on by default): a request sent again after
                    // its answer was lost in the kill is stored once.
                    if n > 1 {
                        bad_dupes.push(format!("{name} x{n} (sent {} times)", st.attempts));
                    }
                    let want = hex(&common::span_id(seq(i, j)));
                    if span_id != want {
                        bad_ids.push(format!("{name}: spanId {span_id}, expected {want}"));
                    }
                }
            }
        }
    }
    let unexpected: Vec<_> = counts.keys().take(10).cloned().collect();
    assert!(
        missing_before_kill.is_empty() && missing_after_kill.is_empty(),
        "acknowledged spans missing from the archive: {} acknowledged before the kill \
         (first: {:?}), {} acknowledged after the restart (first: {:?}); archive has {} records",
        missing_before_kill.len(),
        &missing_before_kill[..missing_before_kill.len().min(5)],
        missing_after_kill.len(),
        &missing_after_kill[..missing_after_kill.len().min(5)],
        records.len()
    );
    assert!(bad_dupes.is_empty(), "duplicated spans: {bad_dupes:?}");
    assert!(
        bad_ids.is_empty(),
        "wrong span ids: {:?}",
        &bad_ids[..bad_ids.len().min(5)]
    );
    assert!(
        unexpected.is_empty(),
        "unexpected span names: {unexpected:?}"
    );

    let mut gw = gw;
    let status = gw.terminate();
    assert!(
        status.success(),
        "SIGTERM after the load: exit status {status}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
