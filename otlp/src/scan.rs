//! Scan-validation of a protobuf `ExportTraceServiceRequest`: one pass over the client's bytes,
//! no allocation, that answers "would the slow path (prost decode → `validate::validate` →
//! tenant stamping) accept every span and leave the request unchanged?" and counts the spans.
//!
//! It owns exactly one claim: `scan(..) == Ok(n)` implies that `ExportTraceServiceRequest::
//! decode` succeeds, `validate` accepts `n` spans, rejects none and modifies nothing, and
//! stamping changes nothing. The gateway then forwards the client's bytes as they are. Every
//! other case — malformed bytes, an invalid span, a limit broken, a tenant attribute to stamp,
//! or an encoding whose prost semantics this scanner does not model (groups, a singular message
//! field sent twice and merged, two members of a oneof) — is `Err(NeedsSlowPath)`, and the
//! caller runs the prost path, which gives the answer and the error messages. Being stricter
//! than prost is therefore always safe; being more lenient never is. The differential tests
//! (below, and `fuzz/fuzz_targets/scan_validate.rs`) check the claim on random, mutated and
//! arbitrary bytes.
//!
//! prost rules mirrored here (prost 0.14, `encoding.rs`): varints of at most 10 bytes whose 10th
//! byte is < 2; keys ≤ u32::MAX with wire type ≤ 5 and tag ≥ 1; a known field must have its
//! declared wire type; `string` fields must be UTF-8; a length may not run past its message;
//! unknown fields are skipped; each nested message costs one unit of a recursion budget of 100,
//! and skipping an unknown field needs a budget > 0.
//!
//! Varints are read by `wire::varint` (one rule for every reader of the bytes).

use crate::validate::SpanLimits;
use crate::wire;

/// The request is not (provably) clean: run the prost path for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsSlowPath;

type R<T> = Result<T, NeedsSlowPath>;

/// prost's `RECURSION_LIMIT`.
pub(crate) const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const I64: u8 = 1;
pub(crate) const LEN: u8 = 2;
const I32: u8 = 5;

/// A resource attribute key that claims a tenant, and the value the authenticated principal
/// gives it. A request carrying the key with any other value must be stamped (slow path).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub key: &'a str,
    pub want: &'a str,
}

/// Scans `buf`; `Ok(spans)` when the request is clean (see the module header).
pub fn scan(buf: &[u8], limits: &SpanLimits, claims: &[Claim<'_>]) -> Result<usize, NeedsSlowPath> {
    scan_items(buf, limits, claims, |s, span, b| s.span(span, b))
}

/// The request, resource and scope levels, which spans and log records share (field 1 of the
/// request; 1 resource, 2 scopes, 3 schema URL; 1 scope, 2 items, 3 schema URL), with `item`
/// checking each span or record (generic, so the hot path's call is direct). Returns the items.
pub(crate) fn scan_items<F>(
    buf: &[u8],
    limits: &SpanLimits,
    claims: &[Claim<'_>],
    item: F,
) -> Result<usize, NeedsSlowPath>
where
    F: Fn(&Scanner<'_, '_>, &[u8], u32) -> R<()> + Copy,
{
    let s = Scanner { l: limits, claims };
    let mut c = Cur::new(buf);
    let mut items = 0usize;
    while !c.done() {
        let (tag, wt) = c.key()?;
        match tag {
            1 => {
                let msg = c.msg(wt, RECURSION_LIMIT)?;
                items += s.resource_items(msg, RECURSION_LIMIT - 1, item)?;
            }
            _ => c.skip(wt, RECURSION_LIMIT)?,
        }
    }
    Ok(items)
}

/// A bounded cursor over one message's bytes. Every read is checked; nothing can index out of
/// bounds or overflow whatever the input. Shared with `prune` (one wire reader, one varint rule).
pub(crate) struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    /// Bytes read so far.
    #[inline(always)]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline(always)]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline(always)]
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> R<u64> {
        wire::varint(self.buf, &mut self.pos).ok_or(NeedsSlowPath)
    }

    #[inline(always)]
    pub(crate) fn key(&mut self) -> R<(u32, u8)> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(NeedsSlowPath);
        }
        let wt = (k & 7) as u8;
        let tag = (k as u32) >> 3;
        if wt > 5 || tag == 0 {
            return Err(NeedsSlowPath);
        }
        Ok((tag, wt))
    }

    #[inline(always)]
    pub(crate) fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(NeedsSlowPath)?;
        let s = self.buf.get(self.pos..end).ok_or(NeedsSlowPath)?;
        self.pos = end;
        Ok(s)
    }

    #[inline(always)]
    pub(crate) fn len_delimited(&mut self) -> R<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| NeedsSlowPath)?;
        self.take(n)
    }

    /// A `bytes` field.
    #[inline(always)]
    pub(crate) fn bytes(&mut self, wt: u8) -> R<&'a [u8]> {
        if wt != LEN {
            return Err(NeedsSlowPath);
        }
        self.len_delimited()
    }

    /// A `string` field: prost refuses one that is not UTF-8 (`is_utf8`).
    #[inline(always)]
    pub(crate) fn string(&mut self, wt: u8) -> R<&'a [u8]> {
        let s = self.bytes(wt)?;
        if is_utf8(s) {
            Ok(s)
        } else {
            Err(NeedsSlowPath)
        }
    }

    /// Any varint-typed scalar (`int32`, `uint32`, `int64`, `bool`, enums).
    #[inline(always)]
    pub(crate) fn varint_field(&mut self, wt: u8) -> R<u64> {
        if wt != VARINT {
            return Err(NeedsSlowPath);
        }
        self.varint()
    }

    #[inline(always)]
    pub(crate) fn fixed64(&mut self, wt: u8) -> R<()> {
        if wt != I64 {
            return Err(NeedsSlowPath);
        }
        self.take(8).map(drop)
    }

    #[inline(always)]
    pub(crate) fn fixed32(&mut self, wt: u8) -> R<()> {
        if wt != I32 {
            return Err(NeedsSlowPath);
        }
        self.take(4).map(drop)
    }

    /// A nested message field, merged by prost with the enclosing message's `budget`: it fails
    /// at 0, and the nested message's own fields get `budget - 1` (the caller passes that on).
    #[inline(always)]
    pub(crate) fn msg(&mut self, wt: u8, budget: u32) -> R<&'a [u8]> {
        if wt != LEN || budget == 0 {
            return Err(NeedsSlowPath);
        }
        self.len_delimited()
    }

    /// Skips an unknown field as prost's `skip_field` does. Groups (deprecated, never sent by
    /// OTLP exporters) are left to the slow path rather than modelled.
    #[inline]
    pub(crate) fn skip(&mut self, wt: u8, budget: u32) -> R<()> {
        if budget == 0 {
            return Err(NeedsSlowPath);
        }
        match wt {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => self.take(4).map(drop),
            _ => Err(NeedsSlowPath),
        }
    }
}

pub(crate) struct Scanner<'l, 'c> {
    pub(crate) l: &'l SpanLimits,
    pub(crate) claims: &'c [Claim<'c>],
}

/// What an `AnyValue` turned out to be; only "a string" matters (tenant stamping).
#[derive(Clone, Copy)]
pub(crate) enum AnyKind<'a> {
    Str(&'a [u8]),
    Other,
}

impl Scanner<'_, '_> {
    /// `ResourceSpans` / `ResourceLogs`; returns its item count. `b` is the budget its fields
    /// are merged with.
    fn resource_items<F>(&self, buf: &[u8], b: u32, item: F) -> R<usize>
    where
        F: Fn(&Scanner<'_, '_>, &[u8], u32) -> R<()> + Copy,
    {
        let mut c = Cur::new(buf);
        let mut spans = 0usize;
        let mut scope_spans = 0usize;
        let mut resource = false;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    // A second `resource` would be merged into the first: not modelled.
                    if std::mem::replace(&mut resource, true) {
                        return Err(NeedsSlowPath);
                    }
                    self.resource(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                2 => {
                    let n = self.scope_items(c.msg(wt, b)?, b.saturating_sub(1), item)?;
                    // validate() drops an empty ScopeSpans, which modifies the request.
                    if n == 0 {
                        return Err(NeedsSlowPath);
                    }
                    spans += n;
                    scope_spans += 1;
                }
                3 => drop(c.string(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        // validate() drops a ResourceSpans without scope spans.
        if scope_spans == 0 {
            return Err(NeedsSlowPath);
        }
        Ok(spans)
    }

    pub(crate) fn resource(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        let mut attrs = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    attrs += 1;
                    let (key, value) = self.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
                    self.check_claim(key, value)?;
                }
                2 => drop(c.varint_field(wt)?),
                3 => self.entity_ref(c.msg(wt, b)?, b.saturating_sub(1))?,
                _ => c.skip(wt, b)?,
            }
        }
        self.attr_count(attrs)
    }

    /// A resource attribute whose key claims a tenant passes only if it already holds exactly
    /// the authenticated value as a string (what `stamp_tenant` leaves unchanged).
    #[inline]
    fn check_claim(&self, key: &[u8], value: Option<AnyKind<'_>>) -> R<()> {
        for cl in self.claims {
            if cl.key.as_bytes() == key {
                match value {
                    Some(AnyKind::Str(s)) if s == cl.want.as_bytes() => {}
                    _ => return Err(NeedsSlowPath),
                }
            }
        }
        Ok(())
    }

    fn entity_ref(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1..=4 => drop(c.string(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        Ok(())
    }

    /// `ScopeSpans` / `ScopeLogs`; returns its item count.
    fn scope_items<F>(&self, buf: &[u8], b: u32, item: F) -> R<usize>
    where
        F: Fn(&Scanner<'_, '_>, &[u8], u32) -> R<()> + Copy,
    {
        let mut c = Cur::new(buf);
        let mut spans = 0usize;
        let mut scope = false;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    if std::mem::replace(&mut scope, true) {
                        return Err(NeedsSlowPath);
                    }
                    self.scope(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                2 => {
                    item(self, c.msg(wt, b)?, b.saturating_sub(1))?;
                    spans += 1;
                }
                3 => drop(c.string(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        Ok(spans)
    }

    pub(crate) fn scope(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        let mut attrs = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 | 2 => drop(c.string(wt)?),
                3 => {
                    attrs += 1;
                    self.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                4 => drop(c.varint_field(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        self.attr_count(attrs)
    }

    #[inline]
    pub(crate) fn attr_count(&self, n: usize) -> R<()> {
        if n > self.l.max_attributes {
            Err(NeedsSlowPath)
        } else {
            Ok(())
        }
    }

    fn span(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        // Singular scalars: the last occurrence wins, as in prost.
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut parent: &[u8] = &[];
        let (mut attrs, mut events, mut links) = (0usize, 0usize, 0usize);
        let mut status = false;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => trace_id = c.bytes(wt)?,
                2 => span_id = c.bytes(wt)?,
                3 | 5 => drop(c.string(wt)?),
                4 => parent = c.bytes(wt)?,
                6 | 10 | 12 | 14 => drop(c.varint_field(wt)?),
                7 | 8 => c.fixed64(wt)?,
                9 => {
                    attrs += 1;
                    self.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                11 => {
                    events += 1;
                    self.event(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                13 => {
                    links += 1;
                    self.link(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                15 => {
                    if std::mem::replace(&mut status, true) {
                        return Err(NeedsSlowPath);
                    }
                    self.status(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                16 => c.fixed32(wt)?,
                _ => c.skip(wt, b)?,
            }
        }
        id_ok(trace_id, 16)?;
        id_ok(span_id, 8)?;
        if !parent.is_empty() {
            id_ok(parent, 8)?;
        }
        self.attr_count(attrs)?;
        if events > self.l.max_events_per_span || links > self.l.max_links_per_span {
            return Err(NeedsSlowPath);
        }
        Ok(())
    }

    fn event(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        let mut attrs = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => c.fixed64(wt)?,
                2 => drop(c.string(wt)?),
                3 => {
                    attrs += 1;
                    self.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                4 => drop(c.varint_field(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        self.attr_count(attrs)
    }

    fn link(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut attrs = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => trace_id = c.bytes(wt)?,
                2 => span_id = c.bytes(wt)?,
                3 => drop(c.string(wt)?),
                4 => {
                    attrs += 1;
                    self.attribute(c.msg(wt, b)?, b.saturating_sub(1))?;
                }
                5 => drop(c.varint_field(wt)?),
                6 => c.fixed32(wt)?,
                _ => c.skip(wt, b)?,
            }
        }
        id_ok(trace_id, 16)?;
        id_ok(span_id, 8)?;
        self.attr_count(attrs)
    }

    fn status(&self, buf: &[u8], b: u32) -> R<()> {
        let mut c = Cur::new(buf);
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                2 => drop(c.string(wt)?),
                3 => drop(c.varint_field(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        Ok(())
    }

    /// A top-level attribute (`KeyValue` of a resource, scope, span, event or link): its key is
    /// limited on its own, its value (nested values included) by `max_attribute_value_bytes`.
    /// Returns the key and what the value was, for tenant claims.
    #[inline]
    pub(crate) fn attribute<'a>(
        &self,
        buf: &'a [u8],
        b: u32,
    ) -> R<(&'a [u8], Option<AnyKind<'a>>)> {
        let mut size = 0usize;
        let (key, value) = self.key_value(buf, b, 1, &mut size)?;
        if key.len() > self.l.max_attribute_value_bytes {
            return Err(NeedsSlowPath);
        }
        Ok((key, value))
    }

    /// A `KeyValue` whose value (if any) sits at `depth`. The key's length is not added to
    /// `size` here: `validate` counts it only for kvlist entries (the caller does).
    fn key_value<'a>(
        &self,
        buf: &'a [u8],
        b: u32,
        depth: usize,
        size: &mut usize,
    ) -> R<(&'a [u8], Option<AnyKind<'a>>)> {
        let mut c = Cur::new(buf);
        let mut key: &[u8] = &[];
        let mut value = None;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => key = c.string(wt)?,
                2 => {
                    // A second `value` would be merged into the first: not modelled.
                    if value.is_some() {
                        return Err(NeedsSlowPath);
                    }
                    value = Some(self.any_value(c.msg(wt, b)?, b - 1, depth, size)?);
                }
                3 => drop(c.varint_field(wt)?),
                _ => c.skip(wt, b)?,
            }
        }
        Ok((key, value))
    }

    /// An `AnyValue` at `depth` (1 = an attribute's own value), as `validate::check_value`
    /// sees it: depth, element counts and the running `size` of strings, bytes and kvlist keys.
    pub(crate) fn any_value<'a>(
        &self,
        buf: &'a [u8],
        b: u32,
        depth: usize,
        size: &mut usize,
    ) -> R<AnyKind<'a>> {
        if depth > self.l.max_attribute_depth {
            return Err(NeedsSlowPath);
        }
        let mut c = Cur::new(buf);
        let mut kind = AnyKind::Other;
        let mut members = 0u32;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    let s = c.string(wt)?;
                    *size += s.len();
                    kind = AnyKind::Str(s);
                }
                2 | 3 | 8 => drop(c.varint_field(wt)?),
                4 => c.fixed64(wt)?,
                5 => self.array(c.msg(wt, b)?, b - 1, depth, size)?,
                6 => self.kvlist(c.msg(wt, b)?, b - 1, depth, size)?,
                7 => *size += c.bytes(wt)?.len(),
                _ => {
                    c.skip(wt, b)?;
                    continue;
                }
            }
            // Two members of the oneof: prost keeps the last (merging messages of the same
            // kind); not modelled.
            members += 1;
            if members > 1 {
                return Err(NeedsSlowPath);
            }
            if *size > self.l.max_attribute_value_bytes {
                return Err(NeedsSlowPath);
            }
        }
        Ok(kind)
    }

    fn array(&self, buf: &[u8], b: u32, depth: usize, size: &mut usize) -> R<()> {
        let mut c = Cur::new(buf);
        let mut n = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    n += 1;
                    self.any_value(c.msg(wt, b)?, b - 1, depth + 1, size)?;
                }
                _ => c.skip(wt, b)?,
            }
        }
        self.attr_count(n)
    }

    fn kvlist(&self, buf: &[u8], b: u32, depth: usize, size: &mut usize) -> R<()> {
        let mut c = Cur::new(buf);
        let mut n = 0usize;
        while !c.done() {
            let (tag, wt) = c.key()?;
            match tag {
                1 => {
                    n += 1;
                    let (key, _) = self.key_value(c.msg(wt, b)?, b - 1, depth + 1, size)?;
                    *size += key.len();
                    if *size > self.l.max_attribute_value_bytes {
                        return Err(NeedsSlowPath);
                    }
                }
                _ => c.skip(wt, b)?,
            }
        }
        self.attr_count(n)
    }
}

/// `validate::check_id`: exact length, not all zeroes.
#[inline(always)]
fn id_ok(id: &[u8], len: usize) -> R<()> {
    if id.len() == len && id.iter().any(|b| *b != 0) {
        Ok(())
    } else {
        Err(NeedsSlowPath)
    }
}

/// Whether `s` is UTF-8, as `std::str::from_utf8` decides. Keys and values are short and
/// nearly always ASCII, where `from_utf8`'s call, alignment prologue and byte loop cost more
/// than the check (perf: 6–11 % of the gateway's CPU). OR-ing eight bytes at a time (LLVM
/// vectorises the loop) settles ASCII; anything else goes to `from_utf8`.
#[inline(always)]
fn is_utf8(s: &[u8]) -> bool {
    let mut acc = 0u64;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        acc |= u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or([0x80; 8]));
    }
    for &b in words.remainder() {
        acc |= u64::from(b);
    }
    acc & 0x8080_8080_8080_8080 == 0 || std::str::from_utf8(s).is_ok()
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
