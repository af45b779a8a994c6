//! A Node.js application on the OpenTelemetry Node SDK's defaults (issue 25): `NodeSDK` with no
//! code configuration (`tests/tools/node_all_signals.js`), so traces, metrics and logs all go to
//! OTLP as the standard variables say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL`, `_HEADERS`),
//! for each protocol it speaks (`http/protobuf`, `http/json`, `grpc`). The SDK (npm, installed by
//! `scripts/node-otel.sh`) reports no exporter error or warning, and every span, log record and
//! data point is archived once under the key's project.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Gateway;

fn node_modules() -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(common::manifest_dir().join("../scripts/node-otel.sh"))
        .arg("modules");
    let out = common::run_command(
        cmd,
        "scripts/node-otel.sh modules",
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/node-otel.sh failed: {}\n(.ci/run installs it; `bash scripts/node-otel.sh install` by hand)",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

#[test]
fn node_sdk_defaults_send_all_three_signals_over_each_protocol() {
    let modules = node_modules();
    // With ClickHouse: the records land in the Collector's tables too (issue 25's "done when").
    let front = common::ChFront::start(&[]);
    let env = common::clickhouse_env(&front, "node");
    common::migrate(&env);
    let gw = Gateway::start(&common::env_refs(&env));
    for (protocol, endpoint) in [
        ("http/protobuf", gw.http_url()),
        ("http/json", gw.http_url()),
        ("grpc", gw.grpc_url()),
    ] {
        let tag = format!("node-{}", protocol.replace('/', "-"));
        let project = tag.clone();
        let key = gw.create_key(&project);
        let mut cmd = Command::new("node");
        cmd.arg(common::manifest_dir().join("tests/tools/node_all_signals.js"))
            .arg(&tag)
            .env("NODE_OTEL_MODULES", &modules)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer {key}"),
            );
        let out = common::run_command(cmd, "node_all_signals.js", Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{protocol}: the Node SDK reported errors: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        common::assert_all_three_signals(&gw.data_dir, &project, &tag, protocol);
        common::assert_all_three_in_clickhouse(&front, "node", &project, &tag);
    }

    // The check can fail: refused exports (a key that does not exist) are errors the SDK
    // reports, and the script exits non-zero.
    let mut cmd = Command::new("node");
    cmd.arg(common::manifest_dir().join("tests/tools/node_all_signals.js"))
        .arg("refused")
        .env("NODE_OTEL_MODULES", &modules)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", gw.http_url())
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer tg_not_a_key",
        );
    let out = common::run_command(cmd, "node_all_signals.js", Duration::from_secs(120));
    assert!(!out.status.success(), "a refused export went unreported");
}
