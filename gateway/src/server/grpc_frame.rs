//! gRPC message framing of a unary call: the 5-byte prefix (compressed-flag, u32 big-endian
//! length) and exactly one message. Hand-written rather than tonic's codec because the receiver
//! reads the body itself (capped, charged to admission as it arrives) and needs the message's
//! bytes as they are, to forward them untouched. No gateway types: the fuzz target
//! `grpc_frame` compiles this file alone.

use bytes::{Buf, Bytes};

/// Why a body is not exactly one framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 5 bytes.
    TruncatedPrefix,
    /// The prefix declares more bytes than the body has.
    Truncated { declared: usize, got: usize },
    /// Bytes after the message: a second message on a unary call.
    Trailing,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TruncatedPrefix => f.write_str("truncated gRPC message prefix"),
            FrameError::Truncated { declared, got } => write!(
                f,
                "truncated gRPC message: prefix says {declared} bytes, got {got}"
            ),
            FrameError::Trailing => f.write_str("more than one message on a unary call"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a unary request body into (compressed-flag, message). Exactly one message.
pub fn split_message(mut body: Bytes) -> Result<(u8, Bytes), FrameError> {
    if body.len() < 5 {
        return Err(FrameError::TruncatedPrefix);
    }
    let flag = body[0];
    let declared = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.advance(5);
    if body.len() < declared {
        return Err(FrameError::Truncated {
            declared,
            got: body.len(),
        });
    }
    if body.len() > declared {
        return Err(FrameError::Trailing);
    }
    Ok((flag, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut b = vec![0, 0, 0, 0, 3];
        b.extend_from_slice(b"abc");
        assert_eq!(
            split_message(b.clone().into()).unwrap(),
            (0, Bytes::from_static(b"abc"))
        );
        assert_eq!(
            split_message(Bytes::from(b[..6].to_vec())),
            Err(FrameError::Truncated {
                declared: 3,
                got: 1
            })
        );
        b.push(1);
        assert_eq!(split_message(b.into()), Err(FrameError::Trailing));
        assert_eq!(
            split_message(Bytes::from_static(&[0, 0])),
            Err(FrameError::TruncatedPrefix)
        );
    }
}
