//! Senders: OTLP/HTTP (reqwest) and OTLP/gRPC (tonic with a raw-bytes codec, so the
//! pre-encoded request is framed as it is and never re-encoded), with the answer classified as
//! acked / retryable refusal / final refusal / error.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes};
use clap::ValueEnum;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceResponse;

use crate::payload::{Encoding, Signal};
use crate::stats::Attempt;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Compresses an HTTP body (gRPC bodies are compressed by tonic).
pub fn compress(c: Compression, level: Option<i32>, raw: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    Ok(match c {
        Compression::None => raw.to_vec(),
        Compression::Gzip => {
            let lvl = level.unwrap_or(1).clamp(0, 9) as u32;
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 8),
                flate2::Compression::new(lvl),
            );
            e.write_all(raw)?;
            e.finish()?
        }
        Compression::Zstd => zstd::bulk::compress(raw, level.unwrap_or(1))?,
    })
}

/// Raw protobuf bytes in, raw bytes out.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[derive(Clone)]
pub enum Sender {
    Http {
        client: reqwest::Client,
        url: String,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
        json: bool,
    },
    Grpc {
        channels: Vec<tonic::client::Grpc<tonic::transport::Channel>>,
        path: &'static str,
    },
}

pub struct SenderConfig<'a> {
    pub endpoint: &'a str,
    pub protocol: Protocol,
    pub encoding: Encoding,
    pub signal: Signal,
    pub compression: Compression,
    pub ca_cert: Option<&'a Path>,
    pub local_addr: Option<std::net::IpAddr>,
    pub timeout: Duration,
    pub connections: usize,
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // HTTP-date form.
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = t.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(d.to_std().unwrap_or(Duration::ZERO))
}

fn rejected_from_json(body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let p = &v["partialSuccess"];
    // The field is named for the signal; only one is ever there.
    let n = ["rejectedSpans", "rejectedLogRecords", "rejectedDataPoints"]
        .iter()
        .map(|k| &p[*k])
        .find(|n| !n.is_null())
        .unwrap_or(&serde_json::Value::Null);
    match n {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The partial success's rejected count: field 1 of field 1 in every signal's response, so the
/// traces response reads all three.
fn rejected_from_pb(body: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

impl Sender {
    pub async fn new(c: &SenderConfig<'_>) -> Result<Sender> {
        let ca = match c.ca_cert {
            Some(p) => Some(
                std::fs::read(p).with_context(|| format!("reading --ca-cert {}", p.display()))?,
            ),
            None => None,
        };
        match c.protocol {
            Protocol::Http => {
                let mut b = reqwest::Client::builder()
                    .timeout(c.timeout)
                    .no_proxy()
                    .pool_max_idle_per_host(1024)
                    .local_address(c.local_addr);
                if let Some(pem) = &ca {
                    b = b
                        .add_root_certificate(reqwest::Certificate::from_pem(pem)?)
                        .tls_built_in_root_certs(false);
                }
                let base = c.endpoint.trim_end_matches('/');
                let path = c.signal.http_path();
                let url = if base.ends_with(path) {
                    base.to_string()
                } else {
                    format!("{base}{path}")
                };
                Ok(Sender::Http {
                    client: b.build()?,
                    url,
                    content_type: match c.encoding {
                        Encoding::Protobuf => "application/x-protobuf",
                        Encoding::Json => "application/json",
                    },
                    content_encoding: match c.compression {
                        Compression::None => None,
                        Compression::Gzip => Some("gzip"),
                        Compression::Zstd => Some("zstd"),
                    },
                    json: c.encoding == Encoding::Json,
                })
            }
            Protocol::Grpc => {
                anyhow::ensure!(c.local_addr.is_none(), "--local-addr is for OTLP/HTTP only");
                let mut channels = vec![];
                for _ in 0..c.connections.max(1) {
                    let mut ep = tonic::transport::Endpoint::from_shared(c.endpoint.to_string())
                        .with_context(|| format!("bad --endpoint {:?}", c.endpoint))?
                        .timeout(c.timeout)
                        .connect_timeout(c.timeout);
                    if c.endpoint.starts_with("https://") {
                        let mut tls = tonic::transport::ClientTlsConfig::new();
                        if let Some(pem) = &ca {
                            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                        }
                        ep = ep.tls_config(tls)?;
                    }
                    let ch = ep
                        .connect()
                        .await
                        .with_context(|| format!("connecting to {}", c.endpoint))?;
                    let mut g = tonic::client::Grpc::new(ch)
                        .max_encoding_message_size(usize::MAX)
                        .max_decoding_message_size(64 << 20)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Zstd);
                    match c.compression {
                        Compression::None => {}
                        Compression::Gzip => g = g.send_compressed(CompressionEncoding::Gzip),
                        Compression::Zstd => g = g.send_compressed(CompressionEncoding::Zstd),
                    }
                    channels.push(g);
                }
                Ok(Sender::Grpc {
                    channels,
                    path: c.signal.grpc_path(),
                })
            }
        }
    }

    /// Sends one request body (`id` picks the gRPC connection).
    pub async fn send(&self, id: u64, auth: &str, body: Bytes) -> Attempt {
        match self {
            Sender::Http {
                client,
                url,
                content_type,
                content_encoding,
                json,
            } => {
                let mut rb = client
                    .post(url.as_str())
                    .header("content-type", *content_type)
                    .header("authorization", auth)
                    .body(body);
                if let Some(ce) = content_encoding {
                    rb = rb.header("content-encoding", *ce);
                }
                match rb.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let ra = retry_after(r.headers());
                        let body = r.bytes().await.unwrap_or_default();
                        let label = format!("http_{status}");
                        match status {
                            200 => Attempt::Ok {
                                rejected_spans: if *json {
                                    rejected_from_json(&body)
                                } else {
                                    rejected_from_pb(&body)
                                },
                            },
                            429 | 502 | 503 | 504 => Attempt::Retryable {
                                label,
                                retry_after: ra,
                            },
                            _ => Attempt::Final { label },
                        }
                    }
                    Err(e) if e.is_timeout() => Attempt::Error {
                        label: "timeout".into(),
                    },
                    Err(e) if e.is_connect() => Attempt::Error {
                        label: "connect".into(),
                    },
                    Err(e) => Attempt::Error {
                        label: transport_label(&e),
                    },
                }
            }
            Sender::Grpc { channels, path } => {
                let mut g = channels[(id % channels.len() as u64) as usize].clone();
                let mut req = tonic::Request::new(body);
                match auth.parse() {
                    Ok(v) => {
                        req.metadata_mut().insert("authorization", v);
                    }
                    Err(_) => {
                        return Attempt::Final {
                            label: "bad_api_key".into(),
                        }
                    }
                }
                if let Err(e) = g.ready().await {
                    let _ = e;
                    return Attempt::Error {
                        label: "connect".into(),
                    };
                }
                let path = http::uri::PathAndQuery::from_static(path);
                match g.unary(req, path, RawCodec).await {
                    Ok(resp) => Attempt::Ok {
                        rejected_spans: rejected_from_pb(resp.get_ref()),
                    },
                    Err(s) => classify_grpc(&s),
                }
            }
        }
    }
}

fn classify_grpc(s: &tonic::Status) -> Attempt {
    use tonic::Code;
    use tonic_types::StatusExt;
    let label = format!("grpc_{:?}", s.code()).to_lowercase();
    let retry_after = s.get_details_retry_info().and_then(|r| r.retry_delay);
    match s.code() {
        Code::Unavailable => Attempt::Retryable { label, retry_after },
        Code::ResourceExhausted if retry_after.is_some() => {
            Attempt::Retryable { label, retry_after }
        }
        Code::DeadlineExceeded | Code::Cancelled => Attempt::Error { label },
        // tonic reports transport failures as Unknown / Internal with a source error.
        Code::Unknown if s.message().contains("transport") => Attempt::Error { label },
        _ => Attempt::Final { label },
    }
}

/// "transport", with what broke where it is known: a reset (the server closed with bytes of
/// ours unread), an early close (no answer on a reused connection), a broken pipe. Tells a
/// gateway that dropped refused connections apart from one that closed idle ones.
fn transport_label(e: &reqwest::Error) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut text = String::new();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionReset => return "transport_reset".into(),
                std::io::ErrorKind::BrokenPipe => return "transport_broken_pipe".into(),
                std::io::ErrorKind::UnexpectedEof => return "transport_eof".into(),
                _ => {}
            }
        }
        text = s.to_string();
        src = s.source();
    }
    if text.contains("closed before message completed") || text.contains("connection closed") {
        "transport_closed".into()
    } else {
        "transport".into()
    }
}
