//! Accepted encodings beyond the exporters' defaults: HTTP deflate (zlib and raw; a real binary,
//! as it reads the gateway's metrics), and the OTLP/JSON rules (hex ids in any case, int64 as
//! string or number, enums as integers, unknown fields ignored; the gateway in-process).

mod common;

use std::io::Write;

use common::*;

#[test]
fn deflate_zlib_and_raw_are_accepted() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("enc");
    let auth = format!("Bearer {key}");
    for (name, raw) in [("zlib", false), ("raw", true)] {
        let body = encode(&request_n(&format!("deflate-{name}"), 1, 3));
        let compressed = if raw {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&body).unwrap();
            e.finish().unwrap()
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&body).unwrap();
            e.finish().unwrap()
        };
        let r = post(
            &gw.traces_url(),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "deflate"),
            ],
            compressed,
        );
        assert_eq!(r.0, 200, "{name}");
    }
    let names = span_names(&gw.archive_spans(Some("enc")));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("deflate-")).count(),
        6
    );
    // Deflate bodies are not forwarded: their envelopes are plain (schema version 1).
    let encodings = envelope_encodings(&archive_batches_in(&gw.data_dir, Some("enc")));
    assert_eq!(encodings.into_iter().collect::<Vec<_>>(), vec![((1, 0), 2)]);
    // Both exports went through the phase histograms inside the request's (body read, then
    // decode on the blocking pool), and neither phase took longer than the whole request.
    let m = gw.metrics();
    let v = |name: &str| common::metric_value(&m, name);
    for phase in [
        "tracegate_request_body_read_seconds",
        "tracegate_request_decode_seconds",
    ] {
        assert_eq!(v(&format!("{phase}_count")), 2.0, "{phase}");
        assert!(
            v(&format!("{phase}_sum")) <= v("tracegate_request_duration_seconds_sum"),
            "{phase}"
        );
    }
}

/// A pipeline test: the gateway runs in-process (`app::run`), the archive is read back with the
/// real `tracegate archive cat`.
#[test]
fn otlp_json_rules() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_in(dir.path(), "json");
    let gw = InProcess::start(dir.path());
    let auth = format!("Bearer {key}");
    let body = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}], "futureField": 1},
        "unknownTopLevelInResource": {"x": [1, 2]},
        "scopeSpans": [{
          "scope": {"name": "s", "version": "1"},
          "spans": [
            {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "name": "json-upper",
             "kind": 2, "startTimeUnixNano": "1700000000000000001", "endTimeUnixNano": 1700000000000000999,
             "attributes": [
               {"key": "i_str", "value": {"intValue": "-9007199254740993"}},
               {"key": "i_num", "value": {"intValue": 42}},
               {"key": "d", "value": {"doubleValue": 1.5}},
               {"key": "b", "value": {"boolValue": true}},
               {"key": "bytes", "value": {"bytesValue": "aGVsbG8="}},
               {"key": "arr", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}},
               {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}}
             ],
             "status": {"code": 2, "message": "boom"},
             "someNewSpanField": {"nested": true}},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175", "parentSpanId": "EEE19B7EC3C1B174",
             "name": "json-lower", "kind": 3, "startTimeUnixNano": 1700000000000000002, "endTimeUnixNano": "1700000000000000003"}
          ]
        }]
      }]
    }"#;
    let r = post(
        &gw.traces_url(),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json; charset=utf-8"),
        ],
        body.as_bytes().to_vec(),
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert_eq!(r.1["content-type"], "application/json");
    assert_eq!(String::from_utf8_lossy(&r.2), "{}");
    gw.shutdown().expect("app::run returned an error");
    let spans = archive_spans_in(dir.path(), Some("json"));
    assert_eq!(spans.len(), 2);
    let upper = spans
        .iter()
        .find(|s| s["span"]["name"] == "json-upper")
        .unwrap();
    assert_eq!(upper["span"]["traceId"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(upper["span"]["spanId"], "eee19b7ec3c1b174");
    assert_eq!(upper["span"]["kind"], 2);
    assert_eq!(upper["span"]["startTimeUnixNano"], "1700000000000000001");
    assert_eq!(upper["span"]["endTimeUnixNano"], "1700000000000000999");
    assert_eq!(upper["span"]["status"]["code"], 2);
    let attr = |k: &str| {
        upper["span"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(attr("i_str")["intValue"], "-9007199254740993");
    assert_eq!(attr("i_num")["intValue"], "42");
    assert_eq!(attr("d")["doubleValue"], 1.5);
    assert_eq!(attr("b")["boolValue"], true);
    assert_eq!(attr("bytes")["bytesValue"], "aGVsbG8=");
    assert_eq!(
        attr("kv")["kvlistValue"]["values"][0]["value"]["stringValue"],
        "v"
    );
    let lower = spans
        .iter()
        .find(|s| s["span"]["name"] == "json-lower")
        .unwrap();
    assert_eq!(lower["span"]["parentSpanId"], "eee19b7ec3c1b174");
    assert_eq!(
        lower["resource"]["attributes"][0]["value"]["stringValue"],
        "svc"
    );
}
