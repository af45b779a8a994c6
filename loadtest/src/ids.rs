//! Sequence-numbered span ids, so a run can be checked for loss and duplicates afterwards.
//!
//! Layout (all integers big-endian):
//!
//! | field | bytes | content |
//! |---|---|---|
//! | `trace_id` | 0..8 | the run id (`--run-id`, a u64, printed as 16 hex digits) |
//! | `trace_id` | 8..16 | the sequence number of the trace's first span |
//! | `span_id` | 0..8 | the span's sequence number, starting at 1 |
//! | `parent_span_id` | 0..8 | the previous span's sequence number (empty for a trace's first span) |
//!
//! Request `r` (0-based, in send order) of `n` spans carries the spans `r*n+1 ..= r*n+n`. A trace
//! is 8 consecutive spans of one request. So from any stored span, `verify` gets its run from
//! the trace id and its sequence number from the span id, and checks the trace id's second half
//! against it.

/// Spans per trace in generated requests.
pub const SPANS_PER_TRACE: u64 = tracegate_spangen::SPANS_PER_TRACE;

/// First span sequence number of request `r` with `n` spans per request.
pub fn first_seq(r: u64, n: u64) -> u64 {
    r * n + 1
}

/// Sequence number of the first span of the trace `seq` belongs to, given its request's first.
pub fn trace_root(seq: u64, req_first: u64) -> u64 {
    req_first + (seq - req_first) / SPANS_PER_TRACE * SPANS_PER_TRACE
}

pub fn trace_id(run_id: u64, root_seq: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&run_id.to_be_bytes());
    t[8..].copy_from_slice(&root_seq.to_be_bytes());
    t
}

pub fn span_id(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// What a stored span's ids say.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A span of `run`: its sequence number.
    Ours(u64),
    /// Of this run, but the trace id does not match the layout (corrupted or forged).
    Malformed,
    /// Another run (or not loadtest's).
    Other,
}

pub fn decode(run_id: u64, trace_id: &[u8], span_id: &[u8]) -> Decoded {
    if trace_id.len() != 16 || trace_id[..8] != run_id.to_be_bytes() {
        return Decoded::Other;
    }
    let Ok(sid) = <[u8; 8]>::try_from(span_id) else {
        return Decoded::Malformed;
    };
    let seq = u64::from_be_bytes(sid);
    let root = u64::from_be_bytes(trace_id[8..].try_into().expect("16-byte trace id"));
    if seq == 0 || root == 0 || root > seq || seq - root >= SPANS_PER_TRACE {
        return Decoded::Malformed;
    }
    Decoded::Ours(seq)
}

/// Parses a run id: 16 hex digits (as printed), or a decimal number.
pub fn parse_run_id(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u64::from_str_radix(hex, 16).map_err(|e| e.to_string());
    }
    s.parse::<u64>()
        .map_err(|_| format!("bad run id {s:?}: 16 hex digits or a decimal number"))
}

pub fn run_id_hex(run_id: u64) -> String {
    format!("{run_id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_foreign_ids() {
        let run = 0xdead_beef_0000_0042;
        let n = 512;
        for r in [0u64, 1, 77] {
            let first = first_seq(r, n);
            for seq in first..first + n {
                let t = trace_id(run, trace_root(seq, first));
                assert_eq!(decode(run, &t, &span_id(seq)), Decoded::Ours(seq));
            }
        }
        let t = trace_id(run, 9);
        assert_eq!(decode(run + 1, &t, &span_id(9)), Decoded::Other);
        // A span id that does not belong to the trace id's trace.
        assert_eq!(decode(run, &t, &span_id(100)), Decoded::Malformed);
        assert_eq!(decode(run, &t, &[1, 2, 3]), Decoded::Malformed);
        assert_eq!(parse_run_id(&run_id_hex(run)), Ok(run));
        assert_eq!(parse_run_id("42"), Ok(42));
        assert!(parse_run_id("zz").is_err());
    }
}
