//! TLS termination and PROXY protocol against the real binary: handshakes with `openssl
//! s_client` (old versions and CBC refused), the real OTel exporters over TLS, certificate
//! rotation under load, mTLS, PROXY v2 frames built here (VPC endpoint and source allow-lists,
//! missing / untrusted / malformed headers), and start-up refusals.
//!
//! Certificates are generated per test (rcgen, ECDSA P-256). Everything binds 127.0.0.1:0.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate's serial number in hex, read by `x509-parser` (an encoder independent of the
/// gateway's own DER reader, whose answers these tests check).
fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

fn serial_of_pem(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    serial_hex(der.as_ref()).unwrap()
}

/// A PROXY v2 header written by the `ppp` crate's builder (not by the gateway's code, whose
/// parser these tests check): the PROXY command over TCP from `src` to `dst` (an IPv4 and an
/// IPv6 address go as IPv6, IPv4-mapped), the AWS VPC endpoint TLV (type 0xEA, subtype 0x01)
/// when `vpce` is given, then `raw` appended to the TLV area as it is (malformed TLVs).
fn build_v2(src: SocketAddr, dst: SocketAddr, vpce: Option<&str>, raw: &[u8]) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    let addresses = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (src, dst),
        _ => (v6(src), v6(dst)),
    };
    let mut b = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
    if let Some(id) = vpce {
        let mut value = vec![0x01];
        value.extend_from_slice(id.as_bytes());
        b = b.write_tlv(0xEA_u8, &value).unwrap();
    }
    b.write_payload(raw).unwrap().build().unwrap()
}

/// Writes `content` to `path` atomically (temp file + rename), as deploy tooling does.
fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A temp dir with `ca.pem`, `cert.pem`, `key.pem`.
struct TlsFiles {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl TlsFiles {
    fn new(serial: u64) -> TlsFiles {
        let f = TlsFiles {
            dir: tempfile::tempdir().unwrap(),
            ca: TestCa::new("tracegate test server CA"),
        };
        std::fs::write(f.path("ca.pem"), f.ca.pem()).unwrap();
        let (c, k) = f.ca.leaf(serial, true);
        f.install(&c, &k);
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn install(&self, cert: &str, key: &str) {
        write_atomic(&self.path("cert.pem"), cert);
        write_atomic(&self.path("key.pem"), key);
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "TRACEGATE_TLS__CERT_FILE".into(),
                self.path("cert.pem").display().to_string(),
            ),
            (
                "TRACEGATE_TLS__KEY_FILE".into(),
                self.path("key.pem").display().to_string(),
            ),
        ]
    }
}

fn start(env: &[(String, String)]) -> Gateway {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Gateway::start(&env)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// reqwest (rustls) trusting `ca_pem`; `localhost` pinned to `addr`. `fresh`: one TLS
/// connection per request.
fn https_client(
    ca_pem: &str,
    addr: SocketAddr,
    identity: Option<String>,
    fresh: bool,
) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .no_proxy();
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    if fresh {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

fn post_tls(
    client: &reqwest::blocking::Client,
    port: u16,
    key: &str,
    body: Vec<u8>,
) -> Result<u16, String> {
    let auth = format!("Bearer {key}");
    try_post(
        client,
        &format!("https://localhost:{port}/v1/traces"),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &auth),
        ],
        body,
    )
    .map(|(s, _, _)| s)
    .map_err(|e| format!("{e:?}"))
}

fn rustls_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Handshakes with `addr` and returns the serial (hex) of the certificate it serves.
/// Waits up to 5 s for the listener at `addr` to serve the certificate of serial `want`
/// (`what` names the wait in a failure); returns how long it took.
fn wait_for_serial(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    want: &str,
    what: &str,
) -> Duration {
    let since = Instant::now();
    loop {
        let got = served_serial(addr, cfg)
            .unwrap_or_else(|e| panic!("{what}: probe handshake failed: {e}"));
        if got == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{what}: still serving {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn served_serial(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    let mut conn = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap())
        .map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    serial_hex(leaf.as_ref()).ok_or_else(|| "unparsable certificate".into())
}

/// `openssl s_client` against `addr` with `args`; returns (handshake succeeded, output).
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .args(args);
    let out = run_command(cmd, &format!("openssl s_client {args:?}"), CMD_TIMEOUT);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // s_client exits 0 after a completed handshake (stdin is /dev/null), 1 when it failed.
    let ok = out.status.success() && !text.contains("Cipher is (NONE)");
    (ok, text)
}

fn one_span_request(prefix: &str, i: u64) -> Vec<u8> {
    encode(&request_n(prefix, i, 1))
}

/// `opentelemetry_http::HttpClient` over our reqwest 0.12 blocking client (what the exporter's
/// built-in reqwest-blocking client does, with our TLS settings).
#[derive(Debug)]
struct TlsHttpClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for TlsHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let resp = self.0.execute(request.try_into()?)?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            out = out.header(k.as_str(), v.as_bytes());
        }
        Ok(out.body(resp.bytes()?)?)
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_versions_suites_and_alpn_with_openssl() {
    let files = TlsFiles::new(7);
    let gw = start(&files.env());
    let ca = files.path("ca.pem");
    let ca = ca.to_str().unwrap();
    for addr in [gw.http, gw.grpc] {
        // The client really offers TLS 1.1 (SECLEVEL=0 lifts OpenSSL's own floor), so the
        // refusal is the server's.
        let (ok, out) = s_client(addr, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "TLS 1.1 accepted on {addr}:\n{out}");
        assert!(out.contains("alert"), "no alert from the server:\n{out}");
        // TLS 1.2 with only CBC suites (SHA-1 and SHA-256 MACs) on offer.
        for cbc in ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"] {
            let (ok, out) = s_client(addr, &["-tls1_2", "-cipher", cbc]);
            assert!(!ok, "CBC suite {cbc} accepted on {addr}:\n{out}");
        }
        // Static RSA / no forward secrecy.
        let (ok, out) = s_client(addr, &["-tls1_2", "-cipher", "AES128-GCM-SHA256"]);
        assert!(!ok, "non-ECDHE suite accepted on {addr}:\n{out}");
        for (v, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let (ok, out) = s_client(addr, &[v, "-CAfile", ca, "-verify_return_error"]);
            assert!(ok, "{v} refused on {addr}:\n{out}");
            assert!(
                out.contains(&format!("New, {want}")),
                "{v} on {addr}:\n{out}"
            );
            assert!(
                out.contains("Verify return code: 0 (ok)"),
                "certificate did not verify against the CA:\n{out}"
            );
        }
    }
    // ALPN: HTTP offers h2 and http/1.1; gRPC only h2.
    let (ok, out) = s_client(gw.http, &["-alpn", "http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: http/1.1"), "{out}");
    let (ok, out) = s_client(gw.http, &["-alpn", "h2"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");
    let (ok, out) = s_client(gw.grpc, &["-alpn", "h2"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");
    let (ok, out) = s_client(gw.grpc, &["-alpn", "http/1.1"]);
    assert!(!ok, "gRPC listener negotiated http/1.1:\n{out}");
    // Plain text on a TLS port gets no HTTP answer.
    let key = gw.create_key("tls-plain");
    assert_eq!(
        raw_exchange(
            gw.http,
            b"",
            &raw_http_post(&key, &one_span_request("p", 1))
        ),
        None
    );
    let m = gw.metrics();
    assert!(
        m.contains(
            "tracegate_connections_refused_total{listener=\"otlp_http\",reason=\"tls_handshake\"}"
        ),
        "{m}"
    );
}

/// The connection attacks over TLS: three times the connection limit of TCP connections that
/// never send a ClientHello, or stop after the first bytes of one, on both ports. A normal TLS
/// client is served within 1 s (idle connections are shed for it) and every silent connection
/// is closed by the head deadline, which covers the handshake.
#[test]
fn silent_connections_over_tls_are_shed_and_closed() {
    let tls = TlsFiles::new(7);
    let mut env = tls.env();
    for (k, v) in [
        ("TRACEGATE_SERVER__MAX_CONNECTIONS", "64"),
        ("TRACEGATE_SERVER__MAX_CONNECTIONS_PER_CLIENT", "0"),
        ("TRACEGATE_SERVER__REQUEST_HEAD_TIMEOUT_MS", "1500"),
    ] {
        env.push((k.into(), v.into()));
    }
    let gw = start(&env);
    let key = gw.create_key("tls-silent");
    // A TLS record header announcing a ClientHello, then nothing.
    let partial_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    let mut silent: Vec<std::net::TcpStream> = Vec::new();
    for port in [gw.http, gw.grpc] {
        for i in 0..192 {
            let mut s = std::net::TcpStream::connect(port).unwrap();
            if i % 2 == 1 {
                s.write_all(partial_hello).unwrap();
            }
            silent.push(s);
        }
    }
    let client = https_client(&tls.ca.pem(), gw.http, None, true);
    let started = Instant::now();
    assert_eq!(
        post_tls(
            &client,
            gw.http.port(),
            &key,
            one_span_request("tls-during", 0)
        ),
        Ok(200)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a TLS client took {:?} while silent connections filled the limit",
        started.elapsed()
    );
    let open = silent
        .iter_mut()
        .map(|s| common::closed_by_server(s, Duration::from_secs(5)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 0, "{open} silent connections still open");
}

#[test]
fn otel_exporters_over_tls() {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{
        Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
    };

    let files = TlsFiles::new(9);
    let gw = start(&files.env());
    let ca_pem = files.ca.pem();
    let project = unique_project("otel-tls");
    let key = gw.create_key(&project);
    let bearer = format!("Bearer {key}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // OTLP/HTTP: the exporter's HTTP client seam, with a reqwest (rustls, ring) that trusts
    // our CA.
    let http_client = TlsHttpClient(https_client(&ca_pem, gw.http, None, false));
    let http = SpanExporter::builder()
        .with_http()
        .with_http_client(http_client)
        .with_endpoint(format!("https://localhost:{}/v1/traces", gw.http.port()))
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .with_headers(HashMap::from([("authorization".into(), bearer.clone())]))
        .build()
        .expect("OTLP/HTTP exporter");

    // OTLP/gRPC through tonic's rustls (ring) with our CA.
    let grpc = {
        let _g = rt.enter();
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", bearer.parse().unwrap());
        SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("https://localhost:{}", gw.grpc.port()))
            .with_tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
                    .domain_name("localhost"),
            )
            .with_protocol(Protocol::Grpc)
            .with_timeout(Duration::from_secs(10))
            .with_metadata(md)
            .build()
            .expect("OTLP/gRPC exporter")
    };

    for (name, exporter) in [("http", http), ("grpc", grpc)] {
        let _g = rt.enter();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("tls-test");
        for i in 0..5 {
            tracer.in_span(format!("tls-{name}-{i}"), |_| {});
        }
        provider
            .force_flush()
            .unwrap_or_else(|e| panic!("{name} exporter over TLS failed: {e:?}"));
        provider.shutdown().unwrap();
    }
    let names = span_names(&gw.archive_spans(Some(&project)));
    for name in ["http", "grpc"] {
        let n = names
            .iter()
            .filter(|s| s.starts_with(&format!("tls-{name}-")))
            .count();
        assert_eq!(n, 5, "{name}: spans archived: {names:?}");
    }
}

#[test]
fn certificate_rotation_under_load() {
    const ROTATIONS: u64 = 100;
    let files = TlsFiles::new(1000);
    let mut env = files.env();
    env.push(("TRACEGATE_TLS__RELOAD_INTERVAL_MS".into(), "100".into()));
    let gw = start(&env);
    let project = unique_project("rotation");
    let key = gw.create_key(&project);
    let ca_pem = files.ca.pem();
    let probe_cfg = rustls_client_config(&ca_pem);

    // A client sending continuously, one new TLS connection per request, so every request
    // handshakes against whatever certificate is current.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let (key, ca_pem, addr) = (key.clone(), ca_pem.clone(), gw.http);
        std::thread::spawn(move || {
            let client = https_client(&ca_pem, addr, None, true);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match post_tls(&client, addr.port(), &key, one_span_request("rot", i)) {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(s) => failures
                        .lock()
                        .unwrap()
                        .push(format!("request {i}: HTTP {s}")),
                    Err(e) => failures.lock().unwrap().push(format!("request {i}: {e}")),
                }
                i += 1;
            }
        })
    };

    let mut worst = Duration::ZERO;
    let mut late = Vec::new();
    let mut prev_serial = serial_of_pem(&std::fs::read_to_string(files.path("cert.pem")).unwrap());
    for r in 1..=ROTATIONS {
        if r == ROTATIONS / 2 {
            // A bad pair (certificate with someone else's key): logged, old one kept.
            let (c, _) = files.ca.leaf(999_999, true);
            let (_, wrong_key) = files.ca.leaf(999_998, true);
            files.install(&c, &wrong_key);
            std::thread::sleep(Duration::from_millis(400));
            assert_eq!(
                served_serial(gw.http, &probe_cfg).unwrap(),
                prev_serial,
                "a mismatched pair replaced the served certificate"
            );
        }
        let (c, k) = files.ca.leaf(1000 + r, true);
        let want = serial_of_pem(&c);
        files.install(&c, &k);
        let took = wait_for_serial(gw.http, &probe_cfg, &want, &format!("rotation {r}"));
        worst = worst.max(took);
        if took > Duration::from_secs(1) {
            late.push((r, took));
        }
        prev_serial = want;
    }
    // The gRPC listener reloads the same files, on its own watch: it may see the last rotation
    // a moment after the HTTP listener did (seen once, 044b against 044c, in session 24).
    wait_for_serial(gw.grpc, &probe_cfg, &prev_serial, "the gRPC listener");
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let failures = failures.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("rotation: {ROTATIONS} rotations, {ok} requests ok, worst swap {worst:?}");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        late.is_empty(),
        "new certificate served later than 1 s: {late:?}"
    );
    assert!(
        ok >= ROTATIONS,
        "only {ok} requests completed during the rotations"
    );
    // Every 200 is durable.
    assert_eq!(gw.archive_spans(Some(&project)).len() as u64, ok);
}

#[test]
fn mtls_refuses_missing_and_untrusted_client_certificates() {
    let files = TlsFiles::new(11);
    let client_ca = TestCa::new("tracegate test client CA");
    let rogue_ca = TestCa::new("someone else's CA");
    std::fs::write(files.path("client-ca.pem"), client_ca.pem()).unwrap();
    let mut env = files.env();
    env.push((
        "TRACEGATE_TLS__CLIENT_CA_FILE".into(),
        files.path("client-ca.pem").display().to_string(),
    ));
    let gw = start(&env);
    let key = gw.create_key("mtls");
    let ca_pem = files.ca.pem();
    let identity = |ca: &TestCa| {
        let (c, k) = ca.leaf(5, false);
        format!("{c}{k}")
    };
    let good = https_client(&ca_pem, gw.http, Some(identity(&client_ca)), false);
    assert_eq!(
        post_tls(&good, gw.http.port(), &key, one_span_request("m", 1)),
        Ok(200)
    );
    let none = https_client(&ca_pem, gw.http, None, false);
    let r = post_tls(&none, gw.http.port(), &key, one_span_request("m", 2));
    assert!(r.is_err(), "no client certificate: {r:?}");
    let rogue = https_client(&ca_pem, gw.http, Some(identity(&rogue_ca)), false);
    let r = post_tls(&rogue, gw.http.port(), &key, one_span_request("m", 3));
    assert!(r.is_err(), "untrusted client certificate: {r:?}");
    // gRPC listener too (global client_ca_file): a handshake without a certificate fails.
    // (TLS 1.2: the refusal is part of the handshake, so s_client sees it for sure.)
    let (ok, out) = s_client(gw.grpc, &["-alpn", "h2", "-tls1_2"]);
    assert!(!ok, "TLS 1.2 without a client certificate accepted:\n{out}");
}

/// `[tls.admin]`: the admin listener stays plain HTTP when only the OTLP listeners have TLS
/// (scrapers are not moved unasked); with `tls.admin.enabled` it serves the same certificate
/// over TLS, and with `tls.admin.client_ca_file` it takes only scrapers with a trusted client
/// certificate. `/metrics` then reports the admin certificate's expiry too.
#[test]
fn admin_listener_tls_and_mtls_when_asked() {
    let files = TlsFiles::new(21);
    let ca_pem = files.ca.pem();
    let plain_get = |gw: &Gateway| {
        http_client_with_timeout(Duration::from_secs(5))
            .get(format!("{}/metrics", gw.admin_url()))
            .send()
            .map(|r| r.status().as_u16())
    };
    let tls_get = |gw: &Gateway, identity: Option<String>| {
        https_client(&ca_pem, gw.admin, identity, true)
            .get(format!("https://localhost:{}/metrics", gw.admin.port()))
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    };

    // OTLP over TLS, admin left alone: plain.
    let gw = start(&files.env());
    assert_eq!(plain_get(&gw).ok(), Some(200));
    drop(gw);

    // Admin over TLS with the global certificate.
    let mut env = files.env();
    env.push(("TRACEGATE_TLS__ADMIN__ENABLED".into(), "true".into()));
    let gw = start(&env);
    assert_eq!(tls_get(&gw, None), Ok(200));
    assert!(
        plain_get(&gw).map(|s| s != 200).unwrap_or(true),
        "plain HTTP answered"
    );
    let body = https_client(&ca_pem, gw.admin, None, true)
        .get(format!("https://localhost:{}/metrics", gw.admin.port()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        body.contains("tracegate_tls_cert_not_after_timestamp_seconds{listener=\"admin\"}"),
        "{body}"
    );
    drop(gw);

    // Admin with mutual TLS: a scraper without a trusted client certificate is refused.
    let client_ca = TestCa::new("tracegate test scraper CA");
    let rogue_ca = TestCa::new("someone else's CA");
    std::fs::write(files.path("scraper-ca.pem"), client_ca.pem()).unwrap();
    env.push((
        "TRACEGATE_TLS__ADMIN__CLIENT_CA_FILE".into(),
        files.path("scraper-ca.pem").display().to_string(),
    ));
    let gw = start(&env);
    let identity = |ca: &TestCa| {
        let (c, k) = ca.leaf(8, false);
        format!("{c}{k}")
    };
    assert_eq!(tls_get(&gw, Some(identity(&client_ca))), Ok(200));
    assert!(tls_get(&gw, None).is_err());
    assert!(tls_get(&gw, Some(identity(&rogue_ca))).is_err());
    // The OTLP listeners are not affected by the admin's client CA.
    let key = gw.create_key("admin-mtls");
    let otlp = https_client(&ca_pem, gw.http, None, false);
    assert_eq!(
        post_tls(&otlp, gw.http.port(), &key, one_span_request("a", 1)),
        Ok(200)
    );
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// gRPC Export over plain HTTP/2 after `preamble`; returns grpc-status.
fn grpc_export(
    target: SocketAddr,
    preamble: Vec<u8>,
    key: &str,
    msg: Vec<u8>,
) -> Result<u32, String> {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = key.to_string();
    rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(10), async move {
            let mut tcp = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(&preamble).await.map_err(|e| e.to_string())?;
            let (client, conn) = h2::client::handshake(tcp)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut client = client.ready().await.map_err(|e| e.to_string())?;
            let req = http::Request::builder()
                .method("POST")
                .uri(format!(
                    "http://{target}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {key}"))
                .body(())
                .unwrap();
            let (resp, mut stream) = client.send_request(req, false).map_err(|e| e.to_string())?;
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(&msg);
            stream
                .send_data(frame.into(), true)
                .map_err(|e| e.to_string())?;
            let resp = resp.await.map_err(|e| format!("response: {e}"))?;
            let (parts, mut body) = resp.into_parts();
            while let Some(d) = body.data().await {
                let d = d.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(d.len());
            }
            let trailers = body.trailers().await.map_err(|e| e.to_string())?;
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or("no grpc-status")?;
            Ok(status)
        })
        .await
        .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn proxy_v2_endpoint_and_source_allow_lists() {
    let gw = Gateway::start(&[
        ("TRACEGATE_PROXY_PROTOCOL__MODE", "v2"),
        ("TRACEGATE_PROXY_PROTOCOL__TRUSTED_CIDRS", "[127.0.0.0/8]"),
        ("TRACEGATE_PROXY_PROTOCOL__HEADER_TIMEOUT_MS", "500"),
        ("TRACEGATE_AUDIT__AGGREGATE_WINDOW_MS", "100"),
    ]);
    let dir = gw.data_dir.clone();
    let vpce_key = create_key_with(&dir, "vpce-project", &["--vpce", "vpce-0good"]);
    let cidr_key = create_key_with(&dir, "cidr-project", &["--cidr", "10.1.0.0/16"]);
    let open_key = gw.create_key("open-project");
    let client = addr("10.1.2.3:5555");
    let lb = addr("10.0.0.9:4318");
    let hdr = |src: SocketAddr, vpce: Option<&str>| build_v2(src, lb, vpce, &[]);
    let body = || one_span_request("proxy", 1);
    let post = |pre: Vec<u8>, key: &str| raw_exchange(gw.http, &pre, &raw_http_post(key, &body()));

    // Endpoint allow-list.
    assert_eq!(post(hdr(client, Some("vpce-0good")), &vpce_key), Some(200));
    assert_eq!(post(hdr(client, Some("vpce-0bad")), &vpce_key), Some(403));
    assert_eq!(post(hdr(client, None), &vpce_key), Some(403));
    // Source allow-list: the address from the header counts, not the TCP peer (127.0.0.1).
    assert_eq!(post(hdr(client, None), &cidr_key), Some(200));
    assert_eq!(post(hdr(addr("10.9.9.9:1"), None), &cidr_key), Some(403));
    assert_eq!(
        post(hdr(addr("[::ffff:10.1.7.7]:1"), None), &cidr_key),
        Some(200)
    );
    // No header: closed without an HTTP answer. Same for a v1 header on a v2 listener.
    assert_eq!(post(vec![], &open_key), None);
    assert_eq!(
        post(
            b"PROXY TCP4 10.1.2.3 10.0.0.9 5555 4318\r\n".to_vec(),
            &open_key
        ),
        None
    );
    // Only the first header counts: a client-sent header after the load balancer's is data.
    let mut two = hdr(client, Some("vpce-0bad"));
    two.extend_from_slice(&hdr(client, Some("vpce-0good")));
    assert_ne!(post(two, &vpce_key), Some(200));
    // Malformed headers: closed, no panic.
    let tlv_overrun = build_v2(client, lb, None, &[0xEA, 0x40, 0x00, 0x01, b'v']);
    assert_eq!(post(tlv_overrun, &open_key), None);
    let leftover = build_v2(client, lb, None, &[0xEA, 0x00]);
    assert_eq!(post(leftover, &open_key), None);
    let mut oversized = hdr(client, Some("vpce-0good"));
    oversized[14] = 0xFF;
    oversized[15] = 0xFF;
    assert_eq!(post(oversized, &open_key), None);
    let huge_id = "v".repeat(300);
    assert_eq!(post(hdr(client, Some(&huge_id)), &open_key), None);
    let mut truncated = hdr(client, Some("vpce-0good"));
    truncated.truncate(20);
    assert_eq!(raw_exchange(gw.http, &truncated, b""), None);
    // A header that promises more bytes than ever come: closed after header_timeout_ms.
    let t = Instant::now();
    let mut long = hdr(client, None);
    long[15] = long[15].wrapping_add(200);
    assert_eq!(raw_exchange(gw.http, &long, b""), None);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Still serving.
    assert_eq!(post(hdr(client, Some("vpce-0good")), &vpce_key), Some(200));

    // gRPC listener: same rules.
    let msg = encode(&request_n("proxy-grpc", 1, 1));
    assert_eq!(
        grpc_export(
            gw.grpc,
            hdr(client, Some("vpce-0good")),
            &vpce_key,
            msg.clone()
        ),
        Ok(0)
    );
    assert_eq!(
        grpc_export(
            gw.grpc,
            hdr(client, Some("vpce-0bad")),
            &vpce_key,
            msg.clone()
        ),
        Ok(7)
    );
    assert!(grpc_export(gw.grpc, vec![], &vpce_key, msg).is_err());

    // Audit events name the client address from the header and the endpoint.
    let audit = dir.join("audit.log");
    let found = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                e["reason"] == "vpce_not_allowed"
                    && e["vpc_endpoint_id"] == "vpce-0bad"
                    && e["client_addr"] == "10.1.2.3:5555"
            })
    });
    assert!(
        found,
        "audit: {}",
        std::fs::read_to_string(&audit).unwrap_or_default()
    );
    let found = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("\"source_not_allowed\"")
    });
    assert!(found);
    let m = gw.metrics();
    for reason in [
        "proxy_missing_header",
        "proxy_invalid_header",
        "proxy_timeout",
    ] {
        assert!(
            m.contains(&format!("listener=\"otlp_http\",reason=\"{reason}\"")),
            "{reason} not counted:\n{m}"
        );
    }
}

#[test]
fn proxy_v2_with_tls_and_untrusted_sources() {
    // HTTP: PROXY from loopback, then TLS. gRPC: trusts only 10.0.0.0/8, so we are refused.
    let files = TlsFiles::new(21);
    let mut env = files.env();
    for (k, v) in [
        ("TRACEGATE_PROXY_PROTOCOL__MODE", "v2"),
        ("TRACEGATE_PROXY_PROTOCOL__TRUSTED_CIDRS", "[127.0.0.0/8]"),
        (
            "TRACEGATE_PROXY_PROTOCOL__GRPC__TRUSTED_CIDRS",
            "[10.0.0.0/8]",
        ),
    ] {
        env.push((k.into(), v.into()));
    }
    let gw = start(&env);
    let key = create_key_with(&gw.data_dir, "tls-proxy", &["--vpce", "vpce-0tls"]);
    let cfg = rustls_client_config(&files.ca.pem());
    let https_after_header = |vpce: &str| -> Option<u16> {
        use std::io::{Read, Write};
        let mut sock =
            std::net::TcpStream::connect_timeout(&gw.http, Duration::from_secs(5)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(&build_v2(
            addr("10.1.2.3:5555"),
            addr("10.0.0.9:443"),
            Some(vpce),
            &[],
        ))
        .unwrap();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(&raw_http_post(&key, &one_span_request("tp", 1)))
            .ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        http_status_of(&out)
    };
    assert_eq!(https_after_header("vpce-0tls"), Some(200));
    assert_eq!(https_after_header("vpce-0other"), Some(403));
    // Untrusted source (gRPC listener): closed before anything is read, valid header or not.
    let hdr = build_v2(
        addr("10.1.2.3:5555"),
        addr("10.0.0.9:443"),
        Some("vpce-0tls"),
        &[],
    );
    assert_eq!(raw_exchange(gw.grpc, &hdr, b"hello"), None);
    let m = gw.metrics();
    assert!(
        m.contains("listener=\"otlp_grpc\",reason=\"proxy_untrusted_source\""),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

#[test]
fn startup_refuses_plaintext_on_non_loopback_and_bad_tls_material() {
    // Refused during config validation, before anything is bound.
    let err = serve_fails(&["--http-addr", "0.0.0.0:0"], &[]);
    assert!(err.contains("server.http_addr"), "{err}");
    assert!(err.contains("tls.allow_plaintext_non_loopback"), "{err}");
    let err = serve_fails(&["--grpc-addr", "[::]:0"], &[]);
    assert!(err.contains("server.grpc_addr"), "{err}");

    let files = TlsFiles::new(31);
    let cert = files.path("cert.pem").display().to_string();
    let key = files.path("key.pem").display().to_string();
    let err = serve_fails(
        &[],
        &[
            ("TRACEGATE_TLS__CERT_FILE", "/nonexistent/cert.pem"),
            ("TRACEGATE_TLS__KEY_FILE", &key),
        ],
    );
    assert!(err.contains("tls.cert_file"), "{err}");
    let (_, other_key) = files.ca.leaf(32, true);
    std::fs::write(files.path("other-key.pem"), other_key).unwrap();
    let other = files.path("other-key.pem").display().to_string();
    let err = serve_fails(
        &[],
        &[
            ("TRACEGATE_TLS__CERT_FILE", &cert),
            ("TRACEGATE_TLS__KEY_FILE", &other),
        ],
    );
    assert!(
        err.contains("tls.key_file") && err.contains("match"),
        "{err}"
    );
    let err = serve_fails(&[], &[("TRACEGATE_TLS__CERT_FILE", &cert)]);
    assert!(err.contains("tls.key_file"), "{err}");
    let err = serve_fails(&[], &[("TRACEGATE_PROXY_PROTOCOL__MODE", "v2")]);
    assert!(err.contains("proxy_protocol.trusted_cidrs"), "{err}");
    let err = serve_fails(&[], &[("TRACEGATE_TLS__CERT_FLIE", &cert)]);
    assert!(err.to_lowercase().contains("cert_flie"), "{err}");
}
