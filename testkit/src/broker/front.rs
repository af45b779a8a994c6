//! A TLS and SASL front for each mock broker: librdkafka's mock cluster speaks plaintext only,
//! so each of its brokers gets a listener that terminates TLS (optionally demanding a client
//! certificate) and runs the SASL exchange the way a Kafka broker does (ApiVersions lists
//! SaslHandshake and SaslAuthenticate, then SaslHandshake v0-1 and SaslAuthenticate v0-1
//! frames), and then relays bytes to the mock broker untouched. The mock advertises the
//! fronts' addresses (`rd_kafka_mock_broker_set_host_port`), so metadata sends clients back
//! through them. A request other than ApiVersions before authentication ends the connection,
//! as a SASL listener does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sasl::{Session, Step, Users};

/// The largest frame read before authentication (librdkafka's are a few hundred bytes).
const MAX_FRAME: usize = 1 << 20;

const API_SASL_HANDSHAKE: i16 = 17;
const API_API_VERSIONS: i16 = 18;
const API_SASL_AUTHENTICATE: i16 = 36;
const ERR_UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ERR_SASL_AUTHENTICATION_FAILED: i16 = 58;

pub struct Front {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub users: Users,
}

/// Serves `listener`, relaying each connection to `backend`.
pub async fn serve(listener: TcpListener, backend: SocketAddr, front: Arc<Front>) {
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            continue;
        };
        let front = front.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sock, backend, &front).await {
                eprintln!("tracegate-test-broker front: {peer}: {e}");
            }
        });
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connection(sock: TcpStream, backend: SocketAddr, front: &Front) -> Result<(), String> {
    let mut client: Box<dyn Stream> = match &front.tls {
        Some(acceptor) => Box::new(
            acceptor
                .accept(sock)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?,
        ),
        None => Box::new(sock),
    };
    let mut up = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("mock broker {backend}: {e}"))?;
    if front.users.enabled() {
        authenticate(&mut client, &mut up, &front.users).await?;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
    Ok(())
}

async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let len = s.read_i32().await.map_err(|e| format!("read: {e}"))?;
    if len < 8 || len as usize > MAX_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(buf)
}

async fn write_frame(s: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> Result<(), String> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("write: {e}"))
}

/// A big-endian reader over one frame.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("short frame".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    /// STRING / NULLABLE_STRING (i16 length).
    fn string(&mut self) -> Result<String, String> {
        let n = self.i16()?;
        Ok(String::from_utf8_lossy(self.take(n.max(0) as usize)?).into_owned())
    }
    /// BYTES (i32 length).
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.i32()?;
        Ok(self.take(n.max(0) as usize)?.to_vec())
    }
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    /// Skips a tagged-field buffer.
    fn skip_tags(&mut self) -> Result<(), String> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let n = self.uvarint()? as usize;
            self.take(n)?;
        }
        Ok(())
    }
}

/// Runs ApiVersions / SaslHandshake / SaslAuthenticate until the client is authenticated.
async fn authenticate(
    client: &mut Box<dyn Stream>,
    up: &mut TcpStream,
    users: &Users,
) -> Result<(), String> {
    let mut session: Option<Session> = None;
    loop {
        let frame = read_frame(client).await?;
        let mut c = Cursor(&frame);
        let (api, version, corr) = (c.i16()?, c.i16()?, c.i32()?);
        let mut reply = corr.to_be_bytes().to_vec();
        match api {
            API_API_VERSIONS => {
                write_frame(up, &frame).await?;
                let answer = read_frame(up).await?;
                write_frame(client, &with_sasl_apis(&answer, version)?).await?;
                continue;
            }
            API_SASL_HANDSHAKE => {
                let _client_id = c.string()?;
                let mechanism = c.string()?;
                session = Session::new(&mechanism, users);
                let code = if session.is_some() {
                    0
                } else {
                    ERR_UNSUPPORTED_SASL_MECHANISM
                };
                reply.extend_from_slice(&code.to_be_bytes());
                let offered = users.mechanisms();
                reply.extend_from_slice(&(offered.len() as i32).to_be_bytes());
                for m in offered {
                    reply.extend_from_slice(&(m.len() as i16).to_be_bytes());
                    reply.extend_from_slice(m.as_bytes());
                }
                write_frame(client, &reply).await?;
                if code != 0 {
                    return Err(format!("unsupported SASL mechanism {mechanism:?}"));
                }
            }
            API_SASL_AUTHENTICATE => {
                let _client_id = c.string()?;
                let input = c.bytes()?;
                let Some(s) = session.as_mut() else {
                    return Err("SaslAuthenticate before SaslHandshake".into());
                };
                let (code, message, out, done) = match s.step(users, &input) {
                    Step::Continue(out) => (0i16, None, out, false),
                    Step::Done(out) => (0, None, out, true),
                    Step::Fail(why) => {
                        (ERR_SASL_AUTHENTICATION_FAILED, Some(why), Vec::new(), false)
                    }
                };
                reply.extend_from_slice(&code.to_be_bytes());
                match &message {
                    Some(m) => {
                        reply.extend_from_slice(&(m.len() as i16).to_be_bytes());
                        reply.extend_from_slice(m.as_bytes());
                    }
                    None => reply.extend_from_slice(&(-1i16).to_be_bytes()),
                }
                reply.extend_from_slice(&(out.len() as i32).to_be_bytes());
                reply.extend_from_slice(&out);
                if version >= 1 {
                    // session_lifetime_ms: 0, no re-authentication required.
                    reply.extend_from_slice(&0i64.to_be_bytes());
                }
                write_frame(client, &reply).await?;
                if let Some(why) = message {
                    return Err(format!("SASL: {why}"));
                }
                if done {
                    return Ok(());
                }
            }
            other => return Err(format!("request (API key {other}) before authentication")),
        }
    }
}

/// The mock's ApiVersions answer with SaslHandshake (v0-1) and SaslAuthenticate (v0-1) added to
/// its API list (the response header is v0 in every version: the correlation id only).
fn with_sasl_apis(answer: &[u8], version: i16) -> Result<Vec<u8>, String> {
    let mut c = Cursor(answer);
    c.take(4)?; // correlation id
    let error = c.i16()?;
    let flexible = version >= 3;
    let count = if flexible {
        c.uvarint()?.saturating_sub(1)
    } else {
        c.i32()?.max(0) as u64
    };
    let entries_start = answer.len() - c.0.len();
    for _ in 0..count {
        c.take(6)?;
        if flexible {
            c.skip_tags()?;
        }
    }
    let entries_end = answer.len() - c.0.len();
    let mut out = answer[..4].to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    let new_count = count + 2;
    if flexible {
        let mut n = new_count + 1;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    } else {
        out.extend_from_slice(&(new_count as i32).to_be_bytes());
    }
    out.extend_from_slice(&answer[entries_start..entries_end]);
    for api in [API_SASL_HANDSHAKE, API_SASL_AUTHENTICATE] {
        out.extend_from_slice(&api.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&1i16.to_be_bytes());
        if flexible {
            out.push(0); // no tagged fields
        }
    }
    out.extend_from_slice(&answer[entries_end..]);
    Ok(out)
}
