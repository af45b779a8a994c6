//! What the log and metric encoders write for every row under one resource and one scope:
//! the resource's and scope's columns, RowBinary-encoded once per resource / scope and copied
//! into each row. Field numbers are the same in `ResourceLogs` and `ResourceMetrics`
//! (1 resource, 2 scopes' list, 3 schema_url) and in `ScopeLogs` / `ScopeMetrics` (1 scope,
//! 2 records, 3 schema_url).

use super::super::pb::{for_each, PbError, Reader};
use super::rowbinary::*;
use super::values::*;

/// The current resource's and scope's columns, each already in RowBinary.
#[derive(Default)]
pub(super) struct Header {
    /// `Map(String, String)`: count, then key / value pairs.
    pub(super) resource_attrs: Vec<u8>,
    /// `String`s.
    pub(super) service_name: Vec<u8>,
    pub(super) resource_schema_url: Vec<u8>,
    pub(super) scope_name: Vec<u8>,
    pub(super) scope_version: Vec<u8>,
    pub(super) scope_attrs: Vec<u8>,
    pub(super) scope_schema_url: Vec<u8>,
    pub(super) scope_dropped: u32,
    json: Vec<u8>,
    itoa: itoa::Buffer,
}

impl Header {
    /// Reads a `ResourceLogs` / `ResourceMetrics` message's resource and schema URL.
    pub(super) fn resource(&mut self, msg: &[u8]) -> Result<(), PbError> {
        let (mut resource, mut url): (&[u8], &[u8]) = (&[], &[]);
        let mut r = Reader::new(msg);
        while let Some((n, v)) = r.next_field()? {
            match n {
                1 => resource = v.bytes(),
                3 => url = v.bytes(),
                _ => {}
            }
        }
        self.resource_schema_url.clear();
        put_str(&mut self.resource_schema_url, url);
        let mut found = false;
        self.service_name.clear();
        let mut out = std::mem::take(&mut self.resource_attrs);
        let r = put_map(
            &mut out,
            resource,
            1,
            &mut self.json,
            &mut self.itoa,
            |k, s| {
                if k == b"service.name" {
                    self.service_name.clear();
                    put_str(&mut self.service_name, s);
                    found = true;
                }
            },
        );
        self.resource_attrs = out;
        if !found {
            put_str(&mut self.service_name, b"");
        }
        r
    }

    /// Reads a `ScopeLogs` / `ScopeMetrics` message's scope and schema URL.
    pub(super) fn scope(&mut self, msg: &[u8]) -> Result<(), PbError> {
        let (mut scope, mut url): (&[u8], &[u8]) = (&[], &[]);
        let mut r = Reader::new(msg);
        while let Some((n, v)) = r.next_field()? {
            match n {
                1 => scope = v.bytes(),
                3 => url = v.bytes(),
                _ => {}
            }
        }
        self.scope_schema_url.clear();
        put_str(&mut self.scope_schema_url, url);
        let (mut name, mut version): (&[u8], &[u8]) = (&[], &[]);
        self.scope_dropped = 0;
        let mut r = Reader::new(scope);
        while let Some((n, v)) = r.next_field()? {
            match n {
                1 => name = v.bytes(),
                2 => version = v.bytes(),
                4 => self.scope_dropped = v.u64() as u32,
                _ => {}
            }
        }
        self.scope_name.clear();
        put_str(&mut self.scope_name, name);
        self.scope_version.clear();
        put_str(&mut self.scope_version, version);
        let mut out = std::mem::take(&mut self.scope_attrs);
        let r = put_map(
            &mut out,
            scope,
            3,
            &mut self.json,
            &mut self.itoa,
            |_, _| {},
        );
        self.scope_attrs = out;
        r
    }
}

/// Replaces `out` with the RowBinary `Map(String, String)` of the `KeyValue`s that are field
/// `num` of `msg` (values as strings: `values::any_string`); `seen` sees every pair.
pub(super) fn put_map(
    out: &mut Vec<u8>,
    msg: &[u8],
    num: u32,
    json: &mut Vec<u8>,
    itoa: &mut itoa::Buffer,
    mut seen: impl FnMut(&[u8], &[u8]),
) -> Result<(), PbError> {
    out.clear();
    append_map(out, msg, num, json, itoa, &mut seen)
}

/// Appends the RowBinary `Map(String, String)` of field `num`'s `KeyValue`s to `out`.
pub(super) fn append_map(
    out: &mut Vec<u8>,
    msg: &[u8],
    num: u32,
    json: &mut Vec<u8>,
    itoa: &mut itoa::Buffer,
    seen: &mut impl FnMut(&[u8], &[u8]),
) -> Result<(), PbError> {
    let mut count = 0u64;
    for_each(msg, num, |_| {
        count += 1;
        Ok(())
    })?;
    put_varint(out, count);
    for_each(msg, num, |kv| {
        let (k, v) = parse_kv(kv)?;
        let s = any_string(parse_any(v)?, json, itoa)?;
        seen(k, s);
        put_str(out, k);
        put_str(out, s);
        Ok(())
    })
}
