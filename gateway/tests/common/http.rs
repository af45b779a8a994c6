//! HTTP clients and raw HTTP/TCP exchanges with the gateway.

use super::*;

pub fn http_client_with_timeout(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Response of a POST: status code, headers, body bytes.
pub type HttpResponse = (u16, reqwest::header::HeaderMap, Vec<u8>);

/// POST `body` to `url` with `headers`; transport errors are returned.
pub fn try_post(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, reqwest::Error> {
    let mut rb = client.post(url).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes()?.to_vec();
    Ok((status, headers, body))
}

/// POST with a fresh client; panics on transport error.
pub fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
    try_post(&http_client(), url, headers, body)
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

/// POST protobuf-encoded `req` to the gateway's `/v1/traces` with `Authorization: Bearer key`.
pub fn post_protobuf(gw: &Gateway, key: &str, req: &ExportTraceServiceRequest) -> HttpResponse {
    post_otlp(gw, key, "/v1/traces", encode(req))
}

/// POST a protobuf body to the gateway's OTLP/HTTP `path` (`/v1/logs`, `/v1/metrics`, …) with
/// `Authorization: Bearer key`.
pub fn post_otlp(gw: &Gateway, key: &str, path: &str, body: Vec<u8>) -> HttpResponse {
    let auth = format!("Bearer {key}");
    post(
        &format!("{}{path}", gw.http_url()),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &auth),
        ],
        body,
    )
}

/// POST protobuf-encoded `req`, compressed with `encoding` (`gzip` or `zstd`), with
/// `Content-Encoding: encoding`.
pub fn post_protobuf_compressed(
    gw: &Gateway,
    key: &str,
    req: &ExportTraceServiceRequest,
    encoding: &str,
) -> HttpResponse {
    let auth = format!("Bearer {key}");
    let plain = encode(req);
    let body = match encoding {
        "gzip" => gzip(&plain),
        "zstd" => zstd::encode_all(&plain[..], 3).expect("zstd"),
        other => panic!("post_protobuf_compressed: unknown encoding {other}"),
    };
    post(
        &gw.traces_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", encoding),
            ("authorization", &auth),
        ],
        body,
    )
}

/// POST JSON-encoded `req` to the gateway's `/v1/traces` with `Authorization: Bearer key`.
pub fn post_json(gw: &Gateway, key: &str, req: &ExportTraceServiceRequest) -> HttpResponse {
    let auth = format!("Bearer {key}");
    post(
        &gw.traces_url(),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        encode_json(req),
    )
}

/// GET `url` with a fresh client; returns (status, body text).
pub fn get(url: &str) -> (u16, String) {
    let resp = http_client()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// A complete HTTP/1.1 `POST /v1/traces` (protobuf, `Connection: close`) as bytes.
pub fn raw_http_post(key: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Status code of the first HTTP/1.x response in `bytes`, if any.
pub fn http_status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Connects to `addr`, writes `preamble` then `request`, and reads until the server closes
/// (10 s bound). `None` = no HTTP response (the connection was closed or reset).
pub fn raw_exchange(addr: SocketAddr, preamble: &[u8], request: &[u8]) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // Writes may fail once the server has closed: that is an answer too.
    let _ = s.write_all(preamble);
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    http_status_of(&out)
}

/// How long the front may take to print its listening line (importing chdb takes a few s).
pub const CH_START_TIMEOUT: Duration = Duration::from_secs(60);

/// True once the server has closed `s` (EOF or reset), polling for at most `within`.
pub fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}
