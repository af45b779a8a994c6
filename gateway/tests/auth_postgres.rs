//! The PostgreSQL key store against a real PostgreSQL (started by `scripts/pg.sh` in a temp dir,
//! one cluster per test) and the real `tracegate` binary:
//! - `tracegate keys migrate` is idempotent; `keys create|list|rotate|revoke --store postgres`;
//! - the gateway runs with the read-only role (granted `tracegate_gateway`), which cannot change
//!   `api_keys`, and accepts a key from PostgreSQL;
//! - a key revoked in PostgreSQL (CLI or plain SQL) while a client sends with it is refused by
//!   100 % of the requests started after the revoke returned, within 5 s, with a 10-minute cache
//!   TTL — so it is LISTEN/NOTIFY that does it, not expiry;
//! - PostgreSQL stopped mid-run: a cached key keeps working, an unseen key gets 503 +
//!   Retry-After (never 401); after a restart the store reconnects and LISTENs again;
//! - a half-open store connection (NOTIFYs silently lost) is detected by the store's ping and
//!   replaced, which drops the cache, so the revocation still lands in seconds;
//! - revocation is one-way in the store: a stale read-modify-write (a racing rotate) cannot
//!   un-revoke a key.
//!
//! The gateway's LOGIN role is created here, after the migration, the way an operator would:
//! `CREATE ROLE tracegate_gw LOGIN PASSWORD '…' IN ROLE tracegate_gateway`.
//! Without PostgreSQL installed these tests fail with an install hint (CI installs it).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The bound: a revoked key is refused within this.
const REVOKE_BOUND: Duration = Duration::from_secs(5);

type Db = PgKeys;

/// POSTs one small protobuf request; returns the status (0 on a transport error) and whether
/// a `Retry-After` header came back.
fn send(client: &reqwest::blocking::Client, gw: &Gateway, key: &str, name: &str) -> (u16, bool) {
    let auth = format!("Bearer {key}");
    let req = request_n(name, 0, 1);
    match try_post(
        client,
        &gw.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &auth),
        ],
        encode(&req),
    ) {
        Ok((status, headers, _)) => (status, headers.contains_key("retry-after")),
        Err(e) => {
            eprintln!("transport error: {e}");
            (0, false)
        }
    }
}

fn status(gw: &Gateway, key: &str) -> u16 {
    send(
        &http_client_with_timeout(Duration::from_secs(10)),
        gw,
        key,
        "probe",
    )
    .0
}

#[test]
fn migrate_is_idempotent_and_keys_cli_manages_postgres_keys() {
    let db = Db::start();
    // Second run: nothing left to apply.
    let again = db.keys_ok(&["migrate"]);
    assert!(again.contains("migrations applied: []"), "{again}");
    let versions = pg_query_text(
        &db.pg.admin_url,
        "SELECT version::text FROM tracegate_schema_migrations",
        &[],
    )
    .unwrap();
    assert_eq!(versions, vec![vec!["1".to_string()]]);

    let project = unique_project("pg-cli");
    let out = db.keys_ok(&[
        "create",
        "--project",
        &project,
        "--spans-per-sec",
        "5000",
        "--expires-in",
        "30d",
    ]);
    let (id, secret) = id_and_secret(&out);
    assert_eq!(
        out.lines().filter(|l| l.contains(&secret)).count(),
        1,
        "the secret is printed once: {out}"
    );

    // Only the keyed hash is in the table.
    let rows = pg_query_text(
        &db.pg.admin_url,
        "SELECT project_id, secret_hash, region, array_to_string(scopes, ','), \
         spans_per_sec::text, (expires_at > now() + interval '29 days')::text \
         FROM api_keys WHERE key_id = $1",
        &[&id],
    )
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row[0], project);
    assert_eq!(row[1].len(), 64, "secret_hash is hex HMAC-SHA256: {row:?}");
    assert!(row[1].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!secret.contains(&row[1]) && !row[1].contains(&secret[secret.len() - 20..]));
    // A new key may send every signal an SDK exports by default.
    assert_eq!(row[3], "traces:write,logs:write,metrics:write");
    assert_eq!(row[4], "5000");
    assert_eq!(row[5], "true");

    // list: the key, never a secret.
    let list = db.keys_ok(&["list"]);
    assert!(list.contains(&id) && list.contains(&project), "{list}");
    assert!(list.contains("revoked=false"), "{list}");
    let secret_part = secret.rsplit('_').next().unwrap();
    assert!(
        !list.contains(secret_part) && !list.contains(&row[1]),
        "list printed a secret or its hash: {list}"
    );

    // rotate: same id, new secret; the gateway (10-minute cache) drops the old one at once.
    let gw = db.gateway();
    assert_eq!(status(&gw, &secret), 200);
    let out = db.keys_ok(&["rotate", &id]);
    let (rid, new_secret) = id_and_secret(&out);
    assert_eq!(rid, id);
    assert_ne!(new_secret, secret);
    assert!(
        wait_until(REVOKE_BOUND, || status(&gw, &secret) == 401),
        "the old secret still works {REVOKE_BOUND:?} after rotate"
    );
    assert_eq!(status(&gw, &new_secret), 200);
    assert_eq!(status(&gw, &secret), 401);

    // revoke: list shows it, the gateway refuses it.
    let out = db.keys_ok(&["revoke", &id]);
    assert!(out.contains(&format!("revoked: {id}")), "{out}");
    let list = db.keys_ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked=true")),
        "{list}"
    );
    assert!(
        wait_until(REVOKE_BOUND, || status(&gw, &new_secret) == 401),
        "revoked key still accepted"
    );
    // A revoked key cannot be rotated back to life; unknown ids are errors.
    assert!(!db.keys(&["rotate", &id]).status.success());
    assert!(!db.keys(&["revoke", "nosuchkey"]).status.success());
}

#[test]
fn gateway_with_read_only_role_accepts_postgres_key_and_cannot_write() {
    let db = Db::start();
    let project = unique_project("pg-ro");
    let (id, secret) = db.create(&project);
    let gw = db.gateway();

    let req = request_n("pg-ro", 0, 3);
    let (code, _, body) = post_protobuf(&gw, &secret, &req);
    assert_eq!(
        code,
        200,
        "POST with a postgres key: {}",
        String::from_utf8_lossy(&body)
    );
    let records = gw.archive_spans(Some(&project));
    let mut names = span_names(&records);
    names.sort();
    assert_eq!(names, vec!["pg-ro-0", "pg-ro-1", "pg-ro-2"]);
    assert!(records.iter().all(|r| r["project_id"] == project.as_str()));

    // The gateway's role reads keys and nothing more.
    let gw_url = &db.gw_url;
    let n = pg_query_text(
        gw_url,
        "SELECT key_id FROM api_keys WHERE key_id = $1",
        &[&id],
    )
    .expect("the gateway role can read api_keys");
    assert_eq!(n.len(), 1);
    let update = pg_execute(
        gw_url,
        "UPDATE api_keys SET revoked = true WHERE key_id = $1",
        &[&id],
    );
    let err = update.expect_err("the read-only role updated api_keys");
    assert!(err.contains("42501"), "expected permission denied: {err}");
    for sql in [
        "DELETE FROM api_keys",
        "INSERT INTO api_keys (key_id, org_id, project_id, secret_hash, scopes, region) \
         VALUES ('x', 'o', 'p', 'h', '{traces:write}', 'local')",
        "CREATE TABLE gw_owned (x int)",
        "ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify",
    ] {
        let err = pg_batch(gw_url, sql).expect_err(sql);
        assert!(
            err.contains("42501"),
            "{sql}: expected permission denied, got {err}"
        );
    }
    let revoked = pg_query_text(
        &db.pg.admin_url,
        "SELECT revoked::text FROM api_keys WHERE key_id = $1",
        &[&id],
    )
    .unwrap();
    assert_eq!(revoked, vec![vec!["false".to_string()]]);
    assert_eq!(status(&gw, &secret), 200);
}

/// One request of the continuous client: when it was sent, when it finished, its status.
#[derive(Clone, Copy)]
struct Sample {
    sent: Instant,
    status: u16,
}

/// Clients that send with `key` from several threads until stopped.
struct Sender {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Sender {
    fn start(gw: &Gateway, key: &str, threads: usize) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, samples) = (stop.clone(), samples.clone());
                let (url, key) = (gw.traces_url(), key.to_string());
                thread::spawn(move || {
                    let client = http_client_with_timeout(Duration::from_secs(5));
                    let auth = format!("Bearer {key}");
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let body = encode(&request_n(&format!("revoke-{t}"), i, 1));
                        i += 1;
                        let sent = Instant::now();
                        let status = match try_post(
                            &client,
                            &url,
                            &[
                                ("content-type", "application/x-protobuf"),
                                ("authorization", &auth),
                            ],
                            body,
                        ) {
                            Ok((s, _, _)) => s,
                            Err(_) => 0,
                        };
                        samples.lock().unwrap().push(Sample { sent, status });
                        // Dense enough to time the switch, light enough for parallel tests.
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Sender {
            stop,
            samples,
            threads,
        }
    }

    fn count(&self, status: u16) -> usize {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.status == status)
            .count()
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("sender thread panicked");
        }
        let mut v = self.samples.lock().unwrap().clone();
        v.sort_by_key(|s| s.sent);
        v
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends continuously with a fresh key, calls `revoke`, keeps sending for `REVOKE_BOUND + 1 s`
/// and checks: every request sent before the revoke started was accepted; among those sent after
/// the revoke returned, all from some point within 5 s on are 401 (none accepted after that point,
/// none failing otherwise). Prints how long after the revoke the last accepted request was sent.
fn assert_revoked_within_bound(db: &Db, gw: &Gateway, how: &str, revoke: impl FnOnce(&str)) {
    let (id, secret) = db.create(&unique_project("pg-revoke"));
    let sender = Sender::start(gw, &secret, 2);
    assert!(
        wait_until(Duration::from_secs(10), || sender.count(200) >= 20),
        "{how}: the key was not accepted before the revoke"
    );
    let revoke_started = Instant::now();
    revoke(&id);
    let revoked_at = Instant::now();
    thread::sleep(REVOKE_BOUND + Duration::from_secs(1));
    let samples = sender.finish();

    let (before, after): (Vec<Sample>, Vec<Sample>) =
        samples.iter().partition(|s| s.sent < revoked_at);
    // While the revoke runs it may already have taken effect; before it, all were accepted.
    assert!(
        before
            .iter()
            .filter(|s| s.sent < revoke_started)
            .all(|s| s.status == 200),
        "{how}: a request before the revoke was not accepted: {:?}",
        before.iter().map(|s| s.status).collect::<Vec<_>>()
    );
    assert!(
        before.iter().all(|s| s.status == 200 || s.status == 401),
        "{how}: statuses other than 200/401 during the revoke"
    );
    let unexpected: Vec<u16> = after
        .iter()
        .map(|s| s.status)
        .filter(|c| *c != 200 && *c != 401)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{how}: statuses other than 200/401: {unexpected:?}"
    );
    // The switch: after the last accepted request, everything is refused.
    let last_ok = after.iter().rposition(|s| s.status == 200);
    let switch = match last_ok {
        Some(i) => after[i].sent - revoked_at,
        None => Duration::ZERO,
    };
    let refused_after = &after[last_ok.map_or(0, |i| i + 1)..];
    let accepted_after = last_ok.map_or(0, |i| {
        after[..=i].iter().filter(|s| s.status == 200).count()
    });
    let first_refusal = samples
        .iter()
        .find(|s| s.status == 401)
        .map(|s| s.sent.saturating_duration_since(revoke_started));
    eprintln!(
        "{how}: the revoke took {:?}; first refusal sent {first_refusal:?} after it started; \
         100 % refused from {switch:?} after it returned ({accepted_after} accepted after it \
         returned, then {} refused)",
        revoked_at - revoke_started,
        refused_after.len(),
    );
    assert!(
        switch < REVOKE_BOUND,
        "{how}: key still accepted {switch:?} after the revoke returned"
    );
    assert!(
        refused_after.iter().all(|s| s.status == 401),
        "{how}: not every request after the switch was refused"
    );
    assert!(
        refused_after.len() >= 20
            && refused_after.last().unwrap().sent - revoked_at >= REVOKE_BOUND,
        "{how}: too few requests after the revoke to tell ({})",
        refused_after.len()
    );
    // And it stays refused.
    assert_eq!(status(gw, &secret), 401, "{how}");
}

#[test]
fn revoked_in_postgres_is_refused_within_5s_while_a_client_sends() {
    let db = Db::start();
    let gw = db.gateway();
    assert_revoked_within_bound(&db, &gw, "keys revoke", |id| {
        let out = db.keys_ok(&["revoke", id]);
        assert!(out.contains("revoked:"), "{out}");
    });
    assert_revoked_within_bound(&db, &gw, "SQL UPDATE", |id| {
        let n = pg_execute(
            &db.pg.admin_url,
            "UPDATE api_keys SET revoked = true WHERE key_id = $1",
            &[id],
        )
        .unwrap();
        assert_eq!(n, 1);
    });
}

#[test]
fn postgres_down_cached_key_works_unknown_key_gets_503_then_recovers() {
    let mut db = Db::start();
    let (_cached_id, cached) = db.create(&unique_project("pg-cached"));
    let (new_id, new) = db.create(&unique_project("pg-new"));
    let gw = db.gateway();
    assert_eq!(status(&gw, &cached), 200);

    db.pg.stop();
    let client = http_client_with_timeout(Duration::from_secs(10));
    // For a few seconds (past the reconnect attempts' first back-offs): the cached key keeps
    // working, the never-seen key is "try again later", never "unauthenticated".
    let until = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    while Instant::now() < until || rounds < 3 {
        let (code, _) = send(&client, &gw, &cached, "outage-cached");
        assert_eq!(code, 200, "cached key refused while PostgreSQL is down");
        let (code, retry_after) = send(&client, &gw, &new, "outage-new");
        assert_eq!(
            code, 503,
            "an unseen key while PostgreSQL is down must get 503, not {code}"
        );
        assert!(retry_after, "503 without Retry-After");
        rounds += 1;
        thread::sleep(Duration::from_millis(200));
    }

    db.pg.restart();
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || send(
            &client, &gw, &new, "after"
        )
        .0 == 200),
        "the new key is not accepted 20 s after PostgreSQL came back"
    );
    eprintln!(
        "store usable again {:?} after PostgreSQL restarted",
        t.elapsed()
    );
    assert_eq!(status(&gw, &cached), 200);

    // The reconnected store LISTENs again: a revocation still lands at once.
    pg_execute(
        &db.pg.admin_url,
        "UPDATE api_keys SET revoked = true WHERE key_id = $1",
        &[&new_id],
    )
    .unwrap();
    let t = Instant::now();
    assert!(
        wait_until(REVOKE_BOUND, || status(&gw, &new) == 401),
        "revocation not seen after the reconnect"
    );
    eprintln!("revocation after reconnect seen in {:?}", t.elapsed());
    assert_eq!(status(&gw, &cached), 200);
}

#[test]
fn revocation_is_one_way_even_against_a_stale_read_modify_write() {
    use tracegate::auth::store::KeyStore;
    let db = Db::start();
    let (id, _) = db.create(&unique_project("pg-sticky"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(tracegate::auth::postgres::PgKeyStore::connect(
            &db.pg.admin_url,
        ))
        .unwrap();
    // A rotate read the record, then a revoke landed, then the rotate writes back.
    let mut read = rt.block_on(store.get(&id)).unwrap().expect("record");
    assert!(!read.revoked);
    let n = pg_execute(
        &db.pg.admin_url,
        "UPDATE api_keys SET revoked = true WHERE key_id = $1",
        &[&id],
    );
    assert_eq!(n, Ok(1));
    read.secret_hash = "00".repeat(32);
    read.last_rotated_at = Some(chrono::Utc::now().to_rfc3339());
    rt.block_on(store.update(read)).unwrap();
    let now = rt.block_on(store.get(&id)).unwrap().expect("record");
    assert!(now.revoked, "a stale write un-revoked the key");
    assert_eq!(now.secret_hash, "00".repeat(32));
    let missing = tracegate::auth::record::KeyRecord {
        key_id: "nosuchkey".into(),
        ..now
    };
    assert!(rt.block_on(store.update(missing)).is_err());
}

/// A TCP proxy whose existing connections can be turned into black holes (bytes dropped, sockets
/// left open: a half-open connection, as behind a dead NAT or load balancer), while new
/// connections still go through.
struct BlackholeProxy {
    addr: std::net::SocketAddr,
    /// Connections accepted before this generation are black-holed.
    cut_before: Arc<std::sync::atomic::AtomicU64>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl BlackholeProxy {
    fn start(upstream: std::net::SocketAddr) -> BlackholeProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::AtomicU64;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cut_before = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut, gen, st) = (cut_before.clone(), generation.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let Ok(server) =
                    std::net::TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let my_gen = gen.fetch_add(1, Ordering::SeqCst) + 1;
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (cut, st) = (cut.clone(), st.clone());
                    thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100)))
                            .unwrap();
                        let mut buf = [0u8; 16384];
                        while !st.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if my_gen < cut.load(Ordering::SeqCst) {
                                        continue; // black hole: drop, keep the socket open
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        BlackholeProxy {
            addr,
            cut_before,
            generation,
            stop,
        }
    }

    /// Black-holes every connection open now; later ones pass.
    fn cut_existing(&self) {
        let g = self.generation.load(Ordering::SeqCst);
        self.cut_before.store(g + 1, Ordering::SeqCst);
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn half_open_store_connection_is_detected_and_replaced() {
    let db = Db::start();
    let (id, secret) = db.create(&unique_project("pg-halfopen"));
    let port: u16 = db
        .pg
        .admin_url
        .rsplit(':')
        .next()
        .and_then(|s| s.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port in the admin URL");
    let proxy = BlackholeProxy::start(([127, 0, 0, 1], port).into());
    let gw_url = format!(
        "postgres://{GW_ROLE}:{GW_PASSWORD}@{}/tracegate",
        proxy.addr
    );
    let mut env = db.env();
    env.retain(|(k, _)| *k != "TRACEGATE_AUTH__DATABASE_URL");
    env.push(("TRACEGATE_AUTH__DATABASE_URL", gw_url));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(&env);
    assert_eq!(status(&gw, &secret), 200);

    // The gateway's LISTEN connection silently stops carrying anything; the revocation's
    // NOTIFY is lost in it. The store must notice (ping) and reconnect, which drops the cache.
    proxy.cut_existing();
    pg_execute(
        &db.pg.admin_url,
        "UPDATE api_keys SET revoked = true WHERE key_id = $1",
        &[&id],
    )
    .unwrap();
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || status(&gw, &secret) == 401),
        "a revocation behind a half-open connection was not seen within 15 s \
         (cache TTL is {CACHE_TTL_MS} ms)"
    );
    eprintln!(
        "revocation behind a half-open connection seen after {:?}",
        t.elapsed()
    );
    // Refused from then on.
    for _ in 0..5 {
        assert_eq!(status(&gw, &secret), 401);
    }
}
