//! A short hold before a refused connection is closed, so the client reads the refusal.
//!
//! A request refused before its body is read (429 over the project's share, 401, 413 with
//! `Expect`) is answered with `Connection: close` and nothing more is read: reading an
//! attacker's body would spend the CPU the refusal saves. But closing a socket that still has
//! unread bytes makes the kernel send a reset, and a client that is still uploading (as
//! ordinary clients are: they send the body without waiting for an answer) may see "connection
//! reset" instead of the 429 and its Retry-After. Measured with `scripts/bench-load.sh attack`:
//! 977 of 49 667 refusals (2 %) reached the noisy client as transport errors once the gateway
//! answered promptly.
//!
//! So after hyper has sent the answer and shut down its write side (FIN), the socket is kept,
//! unread, for [`HOLD`] before it is closed: the client reads the answer and closes first. The
//! client's upload stalls on TCP flow control meanwhile (nothing is read, so this costs no
//! CPU). At most [`MAX_HELD`] sockets are held at once (file descriptors are a budget too);
//! beyond that a connection is closed at once, as before.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

/// How long a shut-down connection is kept before it is closed.
pub const HOLD: Duration = Duration::from_millis(250);
/// Connections held at once, over all listeners.
pub const MAX_HELD: usize = 1024;

fn budget() -> &'static Arc<Semaphore> {
    static HELD: OnceLock<Arc<Semaphore>> = OnceLock::new();
    HELD.get_or_init(|| Arc::new(Semaphore::new(MAX_HELD)))
}

/// An I/O stream that, once shut down for writing, is held for [`HOLD`] after it is dropped.
pub struct Lingering<IO: Send + 'static> {
    inner: Option<IO>,
    shut_down: bool,
}

impl<IO: Send + 'static> Lingering<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            inner: Some(io),
            shut_down: false,
        }
    }

    fn io(&mut self) -> io::Result<&mut IO> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<IO: Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        let Some(io) = self.inner.take() else { return };
        if !self.shut_down {
            return;
        }
        let (Ok(rt), Ok(permit)) = (
            tokio::runtime::Handle::try_current(),
            budget().clone().try_acquire_owned(),
        ) else {
            metrics::counter!(crate::metrics::CONNECTIONS_UNHELD).increment(1);
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(HOLD).await;
            drop(io);
            drop(permit);
        });
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<IO: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shut_down = true;
        match this.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server answers and shuts down while the client still has bytes in flight: with the
    /// hold the client reads the whole answer; the socket closes after `HOLD`.
    #[tokio::test]
    async fn a_shut_down_socket_is_held_then_closed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = Lingering::new(s);
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await.unwrap();
            s.write_all(b"refused").await.unwrap();
            s.shutdown().await.unwrap();
            // Dropped with the client's upload unread.
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The head and a body the server never reads: closing a socket with unread bytes
        // sends a reset at once, which destroys the answer on its way to the client.
        c.write_all(b"head").await.unwrap();
        c.write_all(&vec![0u8; 64 << 10]).await.unwrap();
        server.await.unwrap();
        // Still uploading, as ordinary clients do: within the hold the writes succeed or stall
        // on flow control; a closed socket would answer them with a reset.
        let chunk = vec![0u8; 16 << 10];
        let t0 = std::time::Instant::now();
        while t0.elapsed() < HOLD / 2 {
            match tokio::time::timeout(Duration::from_millis(20), c.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("upload reset within the hold: {e}"),
                Err(_) => break,
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reset before the answer was read: {e}"),
            }
        }
        assert_eq!(got, b"refused");
        assert!(t0.elapsed() < HOLD * 4);
    }
}
