//! Differential tests of the scan fast path against the prost path (decode → validate → stamp):
//! whenever the scan says "clean, n spans", the prost path must accept exactly n spans, reject
//! none and change nothing. Requests come from a hand-rolled wire-level generator (valid and
//! broken ids, invalid UTF-8, unknown fields of every wire type, groups, wrong wire types,
//! overlong varints, duplicated singular fields and oneof members, deep AnyValue nesting past
//! prost's recursion limit, tenant claims) and are then mutated (bit flips, truncation,
//! insertions, deletions). Deterministic seeds: a failure names its seed.

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

use super::*;
use crate::stamp::stamp_tenant;
use crate::validate;

/// The gateway's default claiming keys (`auth.tenant_attribute_keys`) with the values an
/// authenticated principal of org `org-1`, workspace `ws-1`, project `mine` gives them.
const CLAIMS: [Claim<'static>; 3] = [
    Claim {
        key: "tracegate.org_id",
        want: "org-1",
    },
    Claim {
        key: "tracegate.workspace_id",
        want: "ws-1",
    },
    Claim {
        key: "tracegate.project_id",
        want: "mine",
    },
];

/// The prost path's verdict: `None` = refused as malformed, else (accepted, clean).
fn slow(buf: &[u8], l: &SpanLimits) -> Option<(usize, bool)> {
    let mut req = ExportTraceServiceRequest::decode(buf).ok()?;
    let o = validate::validate(&mut req, l);
    let stamped = stamp_tenant(&mut req, &CLAIMS);
    Some((o.accepted, o.rejected == 0 && !o.modified && !stamped))
}

fn fast(buf: &[u8], l: &SpanLimits) -> Result<usize, NeedsSlowPath> {
    scan(buf, l, &CLAIMS)
}

/// Checks the claim for one input; returns (fast said clean, slow said clean).
fn check(buf: &[u8], l: &SpanLimits, what: &str) -> (bool, bool) {
    let s = slow(buf, l);
    let f = fast(buf, l);
    if let Ok(n) = f {
        match s {
            None => panic!("{what}: scan accepted bytes prost refuses: {buf:02x?}"),
            Some((acc, clean)) => {
                assert!(
                    clean,
                    "{what}: scan accepted a request the slow path changes"
                );
                assert_eq!(acc, n, "{what}: span counts differ");
            }
        }
    }
    (f.is_ok(), matches!(s, Some((_, true))))
}

fn limits_variants() -> Vec<SpanLimits> {
    vec![
        SpanLimits::default(),
        SpanLimits {
            max_attributes: 3,
            max_attribute_value_bytes: 40,
            max_attribute_depth: 3,
            max_events_per_span: 2,
            max_links_per_span: 2,
        },
        // The largest depth config allows: prost's recursion limit bites first.
        SpanLimits {
            max_attribute_depth: 99,
            ..Default::default()
        },
    ]
}

/// Wire-level writer with knobs for the unusual encodings.
struct Gen {
    rng: StdRng,
    /// Probability (per mille) of each kind of oddity; 0 = only well-formed, typical encodings.
    odd: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Gen {
    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.random_range(0..1000) < per_mille
    }
    fn odd(&mut self) -> bool {
        let p = self.odd;
        self.chance(p)
    }

    fn varint(&mut self, out: &mut Vec<u8>, v: u64) {
        if self.odd() && v < (1 << 56) {
            // Overlong but valid (prost accepts it): pad with 0x80 continuation bytes.
            let mut tmp = Vec::new();
            put_varint(&mut tmp, v);
            let last = tmp.len() - 1;
            tmp[last] |= 0x80;
            tmp.push(0);
            out.extend_from_slice(&tmp);
        } else {
            put_varint(out, v);
        }
    }

    fn key(&mut self, out: &mut Vec<u8>, tag: u32, wt: u8) {
        // Rarely the wrong wire type for a known field: prost refuses it.
        let wt = if self.chance(self.odd / 4) {
            [0u8, 1, 2, 5][self.rng.random_range(0..4)]
        } else {
            wt
        };
        self.varint(out, (u64::from(tag) << 3) | u64::from(wt));
    }

    fn len_field(&mut self, out: &mut Vec<u8>, tag: u32, data: &[u8]) {
        self.key(out, tag, 2);
        self.varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    fn varint_field(&mut self, out: &mut Vec<u8>, tag: u32, v: u64) {
        self.key(out, tag, 0);
        self.varint(out, v);
    }

    fn fixed64_field(&mut self, out: &mut Vec<u8>, tag: u32, v: u64) {
        self.key(out, tag, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn fixed32_field(&mut self, out: &mut Vec<u8>, tag: u32, v: u32) {
        self.key(out, tag, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn text(&mut self) -> Vec<u8> {
        let n = self.rng.random_range(0..12);
        let mut s: Vec<u8> = (0..n).map(|_| self.rng.random_range(b'a'..=b'z')).collect();
        if self.chance(50) {
            s.extend_from_slice("é中".as_bytes());
        }
        if self.odd() {
            // Invalid UTF-8: a lone continuation byte, or a truncated sequence.
            s.push(if self.rng.random() { 0x80 } else { 0xe4 });
        }
        s
    }

    fn string_field(&mut self, out: &mut Vec<u8>, tag: u32) {
        let t = self.text();
        self.len_field(out, tag, &t);
    }

    fn id(&mut self, len: usize) -> Vec<u8> {
        let len = if self.odd() {
            [0, len - 1, len + 1, 4][self.rng.random_range(0..4)]
        } else {
            len
        };
        if self.odd() {
            return vec![0; len];
        }
        (0..len).map(|_| self.rng.random_range(1..=255u8)).collect()
    }

    /// Unknown fields of every wire type, including (rarely) groups and stray end-groups.
    fn unknown(&mut self, out: &mut Vec<u8>) {
        if !self.odd() {
            return;
        }
        let tag = self.rng.random_range(17..200);
        match self.rng.random_range(0..7) {
            0 => {
                let v = self.rng.random();
                self.varint_field(out, tag, v)
            }
            1 => {
                let v = self.rng.random();
                self.fixed64_field(out, tag, v)
            }
            2 => {
                let v = self.rng.random();
                self.fixed32_field(out, tag, v)
            }
            3 => {
                let t = self.text();
                self.len_field(out, tag, &t);
            }
            4 => {
                // A group with one varint inside.
                put_varint(out, (u64::from(tag) << 3) | 3);
                put_varint(out, 1 << 3); // field 1, varint
                put_varint(out, 5);
                put_varint(out, (u64::from(tag) << 3) | 4);
            }
            5 => put_varint(out, (u64::from(tag) << 3) | 4),
            _ => put_varint(out, (u64::from(tag) << 3) | 7),
        }
    }

    /// Encodes fields produced by `parts` in random order (prost accepts any order).
    fn message(&mut self, parts: Vec<Vec<u8>>) -> Vec<u8> {
        let mut parts = parts;
        if self.chance(200) {
            for i in (1..parts.len()).rev() {
                let j = self.rng.random_range(0..=i);
                parts.swap(i, j);
            }
        }
        let mut out = parts.concat();
        self.unknown(&mut out);
        out
    }

    fn any_value(&mut self, depth: usize) -> Vec<u8> {
        let mut parts = vec![];
        let members = if self.odd() {
            self.rng.random_range(0..3)
        } else {
            1
        };
        for _ in 0..members {
            let mut p = vec![];
            let nest = depth < 6 && self.chance(120);
            match if nest {
                self.rng.random_range(4..6)
            } else {
                self.rng.random_range(0..8)
            } {
                0 | 1 => self.string_field(&mut p, 1),
                2 => self.varint_field(&mut p, 2, 1),
                3 => {
                    let v = self.rng.random();
                    self.varint_field(&mut p, 3, v)
                }
                4 => {
                    let n = self.rng.random_range(0..4);
                    let mut arr = vec![];
                    for _ in 0..n {
                        let v = self.any_value(depth + 1);
                        self.len_field(&mut arr, 1, &v);
                    }
                    self.len_field(&mut p, 5, &arr);
                }
                5 => {
                    let n = self.rng.random_range(0..4);
                    let mut kvl = vec![];
                    for _ in 0..n {
                        let kv = self.key_value(depth + 1, None);
                        self.len_field(&mut kvl, 1, &kv);
                    }
                    self.len_field(&mut p, 6, &kvl);
                }
                6 => {
                    let n = self.rng.random_range(1..30);
                    let b = self.id(n);
                    self.len_field(&mut p, 7, &b);
                }
                _ => {
                    let v = self.rng.random();
                    self.fixed64_field(&mut p, 4, v)
                }
            }
            parts.push(p);
        }
        self.message(parts)
    }

    fn key_value(&mut self, depth: usize, key: Option<&str>) -> Vec<u8> {
        let mut parts = vec![];
        let mut k = vec![];
        match key {
            Some(key) => self.len_field(&mut k, 1, key.as_bytes()),
            None => self.string_field(&mut k, 1),
        }
        parts.push(k);
        if !self.chance(50) {
            let v = self.any_value(depth);
            let mut p = vec![];
            self.len_field(&mut p, 2, &v);
            if self.odd() {
                let v2 = self.any_value(depth);
                self.len_field(&mut p, 2, &v2);
            }
            parts.push(p);
        }
        self.message(parts)
    }

    fn attributes(&mut self, out: &mut Vec<Vec<u8>>, tag: u32) {
        let n = self.rng.random_range(0..5);
        for _ in 0..n {
            let kv = self.key_value(1, None);
            let mut p = vec![];
            self.len_field(&mut p, tag, &kv);
            out.push(p);
        }
    }

    fn span(&mut self) -> Vec<u8> {
        let mut parts = vec![];
        let mut p = vec![];
        let t = self.id(16);
        self.len_field(&mut p, 1, &t);
        let s = self.id(8);
        self.len_field(&mut p, 2, &s);
        if self.rng.random() {
            let pid = self.id(8);
            self.len_field(&mut p, 4, &pid);
        }
        if self.odd() {
            // Duplicate span_id: the last one wins.
            let s = self.id(8);
            self.len_field(&mut p, 2, &s);
        }
        self.string_field(&mut p, 5);
        {
            let v = self.rng.random_range(0..6);
            self.varint_field(&mut p, 6, v)
        };
        self.fixed64_field(&mut p, 7, 1_700_000_000_000_000_000);
        self.fixed64_field(&mut p, 8, 1_700_000_000_100_000_000);
        if self.chance(100) {
            self.string_field(&mut p, 3);
            self.varint_field(&mut p, 10, 1);
            self.fixed32_field(&mut p, 16, 0x100);
        }
        parts.push(p);
        self.attributes(&mut parts, 9);
        for _ in 0..self.rng.random_range(0..3) {
            let mut e = vec![];
            self.fixed64_field(&mut e, 1, 5);
            self.string_field(&mut e, 2);
            let mut ep = vec![e];
            self.attributes(&mut ep, 3);
            let ev = self.message(ep);
            let mut p = vec![];
            self.len_field(&mut p, 11, &ev);
            parts.push(p);
        }
        for _ in 0..self.rng.random_range(0..3) {
            let mut k = vec![];
            let t = self.id(16);
            self.len_field(&mut k, 1, &t);
            let s = self.id(8);
            self.len_field(&mut k, 2, &s);
            let mut kp = vec![k];
            self.attributes(&mut kp, 4);
            let lk = self.message(kp);
            let mut p = vec![];
            self.len_field(&mut p, 13, &lk);
            parts.push(p);
        }
        if self.rng.random() {
            let mut st = vec![];
            self.string_field(&mut st, 2);
            {
                let v = self.rng.random_range(0..3);
                self.varint_field(&mut st, 3, v)
            };
            let n = if self.odd() { 2 } else { 1 };
            for _ in 0..n {
                let mut p = vec![];
                self.len_field(&mut p, 15, &st);
                parts.push(p);
            }
        }
        self.message(parts)
    }

    fn request(&mut self) -> Vec<u8> {
        let mut out = vec![];
        let n_rs = if self.chance(50) {
            0
        } else {
            self.rng.random_range(1..3)
        };
        for _ in 0..n_rs {
            let mut rs = vec![];
            if self.rng.random() {
                let mut res = vec![];
                self.attributes(&mut res, 1);
                if self.chance(150) {
                    let key =
                        ["tracegate.project_id", "tracegate.org_id"][self.rng.random_range(0..2)];
                    let want = if key.contains("org") { "org-1" } else { "mine" };
                    let mut kv = vec![];
                    self.len_field(&mut kv, 1, key.as_bytes());
                    let mut av = vec![];
                    let val = if self.rng.random() { want } else { "evil" };
                    self.len_field(&mut av, 1, val.as_bytes());
                    self.len_field(&mut kv, 2, &av);
                    let mut p = vec![];
                    self.len_field(&mut p, 1, &kv);
                    res.push(p);
                }
                if self.chance(100) {
                    let mut er = vec![];
                    self.string_field(&mut er, 2);
                    self.string_field(&mut er, 3);
                    let mut p = vec![];
                    self.len_field(&mut p, 3, &er);
                    res.push(p);
                }
                let r = self.message(res);
                let times = if self.odd() { 2 } else { 1 };
                for _ in 0..times {
                    let mut p = vec![];
                    self.len_field(&mut p, 1, &r);
                    rs.push(p);
                }
            }
            let n_ss = if self.chance(40) {
                0
            } else {
                self.rng.random_range(1..3)
            };
            for _ in 0..n_ss {
                let mut ss = vec![];
                if self.rng.random() {
                    let mut sc = vec![];
                    self.string_field(&mut sc, 1);
                    let mut scp = vec![sc];
                    self.attributes(&mut scp, 3);
                    let s = self.message(scp);
                    let mut p = vec![];
                    self.len_field(&mut p, 1, &s);
                    ss.push(p);
                }
                let n = if self.chance(40) {
                    0
                } else {
                    self.rng.random_range(1..4)
                };
                for _ in 0..n {
                    let sp = self.span();
                    let mut p = vec![];
                    self.len_field(&mut p, 2, &sp);
                    ss.push(p);
                }
                let s = self.message(ss);
                let mut p = vec![];
                self.len_field(&mut p, 2, &s);
                rs.push(p);
            }
            let r = self.message(rs);
            self.len_field(&mut out, 1, &r);
        }
        self.unknown(&mut out);
        out
    }

    fn mutate(&mut self, buf: &mut Vec<u8>) {
        for _ in 0..self.rng.random_range(1..4) {
            if buf.is_empty() {
                return;
            }
            let i = self.rng.random_range(0..buf.len());
            match self.rng.random_range(0..5) {
                0 => buf[i] ^= 1 << self.rng.random_range(0..8),
                1 => buf.truncate(i),
                2 => buf.insert(i, self.rng.random()),
                3 => {
                    buf.remove(i);
                }
                _ => buf[i] = self.rng.random(),
            }
        }
    }
}

/// A value nested `depth` levels (alternating arrays and kvlists, or only one kind), as one
/// span attribute of an otherwise valid request.
fn deep_request(depth: usize, kind: u8) -> Vec<u8> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(1),
        odd: 0,
    };
    let mut v = vec![];
    g.len_field(&mut v, 1, b"leaf");
    for i in 0..depth.saturating_sub(1) {
        let array = match kind {
            0 => i % 2 == 0,
            1 => true,
            _ => false,
        };
        let mut outer = vec![];
        if array {
            let mut arr = vec![];
            g.len_field(&mut arr, 1, &v);
            g.len_field(&mut outer, 5, &arr);
        } else {
            let mut kv = vec![];
            g.len_field(&mut kv, 1, b"k");
            g.len_field(&mut kv, 2, &v);
            let mut kvl = vec![];
            g.len_field(&mut kvl, 1, &kv);
            g.len_field(&mut outer, 6, &kvl);
        }
        v = outer;
    }
    let mut kv = vec![];
    g.len_field(&mut kv, 1, b"deep");
    g.len_field(&mut kv, 2, &v);
    let mut span = vec![];
    g.len_field(&mut span, 1, &[1; 16]);
    g.len_field(&mut span, 2, &[2; 8]);
    g.len_field(&mut span, 9, &kv);
    let mut ss = vec![];
    g.len_field(&mut ss, 2, &span);
    let mut rs = vec![];
    g.len_field(&mut rs, 2, &ss);
    let mut req = vec![];
    g.len_field(&mut req, 1, &rs);
    req
}

#[test]
fn well_formed_requests_take_the_fast_path_with_the_same_answer() {
    // odd = 0: typical encodings only. Here the scan must be complete as well as sound: every
    // request the slow path keeps unchanged is proven clean by the scan.
    let (mut fast_n, mut total) = (0, 0);
    for l in limits_variants() {
        for seed in 0..3000u64 {
            let mut g = Gen {
                rng: StdRng::seed_from_u64(seed),
                odd: 0,
            };
            let buf = g.request();
            let (f, s) = check(&buf, &l, &format!("seed {seed}"));
            assert_eq!(
                f, s,
                "seed {seed}: scan and slow path disagree on a clean request"
            );
            fast_n += usize::from(f);
            total += 1;
        }
    }
    // Not vacuous: a good share of the requests are clean.
    assert!(
        fast_n * 5 > total,
        "only {fast_n} of {total} requests were clean"
    );
}

#[test]
fn odd_and_mutated_requests_never_get_a_wrong_fast_answer() {
    let (mut fast_n, mut slow_clean, mut refused) = (0, 0, 0);
    for l in limits_variants() {
        for seed in 0..6000u64 {
            let mut g = Gen {
                rng: StdRng::seed_from_u64(seed ^ 0x5eed),
                odd: 60,
            };
            let mut buf = g.request();
            if g.chance(500) {
                g.mutate(&mut buf);
            }
            let (f, s) = check(&buf, &l, &format!("seed {seed}"));
            fast_n += usize::from(f);
            slow_clean += usize::from(s);
            refused += usize::from(slow(&buf, &l).is_none());
        }
    }
    eprintln!("fast {fast_n}, slow-clean {slow_clean}, refused by prost {refused}");
    // The generator reaches all three verdicts, so the property was exercised.
    assert!(fast_n > 500 && refused > 500 && slow_clean > fast_n / 2);
}

#[test]
fn arbitrary_bytes_never_get_a_wrong_fast_answer() {
    let l = SpanLimits::default();
    let mut rng = StdRng::seed_from_u64(42);
    for seed in 0..20_000u64 {
        let n = rng.random_range(0..64);
        let buf: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        check(&buf, &l, &format!("random bytes #{seed}"));
    }
}

#[test]
fn deep_nesting_agrees_with_prost_recursion_limit() {
    let l = SpanLimits {
        max_attribute_depth: 99,
        ..Default::default()
    };
    let mut fast_depths = vec![];
    for kind in 0..3u8 {
        for depth in 1..=130 {
            let buf = deep_request(depth, kind);
            let (f, s) = check(&buf, &l, &format!("depth {depth} kind {kind}"));
            assert_eq!(f, s, "depth {depth} kind {kind}");
            if f {
                fast_depths.push((kind, depth));
            }
        }
    }
    // Arrays cost prost 2 levels per depth, kvlists 3: the deepest accepted values differ.
    let max = |k: u8| {
        fast_depths
            .iter()
            .filter(|(x, _)| *x == k)
            .map(|(_, d)| *d)
            .max()
    };
    assert_eq!(max(1), Some(48));
    assert!(max(2).unwrap() < max(1).unwrap());
    // And the configured depth limit bites before prost's when it is lower.
    let l = SpanLimits::default();
    assert!(fast(&deep_request(32, 1), &l).is_ok());
    assert!(fast(&deep_request(33, 1), &l).is_err());
    assert_eq!(slow(&deep_request(33, 1), &l).map(|s| s.1), Some(false));
}

#[test]
fn realistic_request_is_clean_and_claims_are_checked() {
    use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
    use tracegate_proto::otlp::resource::v1::Resource;
    use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let mk = |attrs: Vec<KeyValue>| {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: attrs,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (1..=3u8)
                        .map(|i| Span {
                            trace_id: vec![i; 16],
                            span_id: vec![i; 8],
                            name: "n".into(),
                            attributes: vec![kv("a", "b")],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    let l = SpanLimits::default();
    assert_eq!(fast(&mk(vec![kv("service.name", "s")]), &l), Ok(3));
    // Already the authenticated project: nothing to stamp, still fast.
    assert_eq!(
        fast(&mk(vec![kv("tracegate.project_id", "mine")]), &l),
        Ok(3)
    );
    // A foreign tenant claim must be stamped: slow path.
    let evil = mk(vec![kv("tracegate.project_id", "victim")]);
    assert_eq!(fast(&evil, &l), Err(NeedsSlowPath));
    assert_eq!(slow(&evil, &l), Some((3, false)));
    // The empty request is clean and has no spans.
    assert_eq!(fast(&[], &l), Ok(0));
}

/// The ASCII shortcut must agree with `from_utf8` everywhere: a non-ASCII or invalid byte at
/// every position of every length around the 8-byte word boundary, and random bytes.
#[test]
fn is_utf8_agrees_with_std() {
    let mut rng = StdRng::seed_from_u64(7);
    let probes: [&[u8]; 6] = [
        b"\x80",
        b"\xff",
        "é".as_bytes(),
        "€".as_bytes(),
        b"\xe2\x82",
        b"\xc3\x28",
    ];
    for len in 0..40 {
        let base = vec![b'a'; len];
        assert!(super::is_utf8(&base));
        for pos in 0..=len {
            for p in probes {
                let mut s = base.clone();
                s.splice(pos..pos, p.iter().copied());
                assert_eq!(super::is_utf8(&s), std::str::from_utf8(&s).is_ok(), "{s:?}");
            }
        }
    }
    for _ in 0..20_000 {
        let len = rng.random_range(0..64);
        let s: Vec<u8> = (0..len)
            .map(|_| {
                if rng.random_bool(0.9) {
                    rng.random_range(0x20..0x7f)
                } else {
                    rng.random()
                }
            })
            .collect();
        assert_eq!(super::is_utf8(&s), std::str::from_utf8(&s).is_ok(), "{s:?}");
    }
}
