//! The gateway started in-process with `app::run` on port-0 listeners (as `main` does, without
//! a child process): for tests that need the pipeline, not a process boundary. The CLI (`keys
//! create`, `archive cat`) still runs as the real binary, on the same data dir.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tracegate::app::{self, Listeners};
use tracegate::config::{Config, Overrides};

/// A gateway running `app::run` on a runtime of its own (the test's HTTP client is blocking).
struct InProcess {
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<anyhow::Result<()>>,
}

impl InProcess {
    fn start(data_dir: &std::path::Path) -> Self {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let overrides = Overrides {
            grpc_addr: Some(any),
            http_addr: Some(any),
            admin_addr: Some(any),
            data_dir: Some(data_dir.to_path_buf()),
        };
        let cfg = Config::load(None, &overrides).expect("default config");
        cfg.validate().expect("valid config");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addrs_tx, addrs_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async move {
                let listeners = Listeners::bind(&cfg).await?;
                addrs_tx.send(listeners.addrs()?).ok();
                app::run(cfg, listeners, async {
                    let _ = stopped.await;
                })
                .await
            });
            done_tx.send(r).ok();
        });
        let (_grpc, http, admin) = addrs_rx
            .recv_timeout(START_TIMEOUT)
            .expect("the in-process gateway did not bind its listeners");
        Self {
            http,
            admin,
            stop: Some(stop),
            done,
        }
    }

    /// Asks it to stop (as SIGTERM does) and waits for `app::run` to return.
    fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.take().unwrap().send(()).ok();
        self.done
            .recv_timeout(TERM_TIMEOUT)
            .expect("app::run did not return after shutdown")
    }
}

#[test]
fn in_process_gateway_acknowledges_archives_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let project = unique_project("inproc");
    let key = create_key_in(dir.path(), &project);
    let gw = InProcess::start(dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || get(&format!(
            "http://{}/readyz",
            gw.admin
        ))
        .0 == 200),
        "never ready"
    );
    let url = format!("http://{}/v1/traces", gw.http);
    let bearer = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("authorization", bearer.as_str()),
    ];
    let (status, _, body) = post(&url, &headers, encode(&request_n("ip", 0, 12)));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(decode_response(&body).partial_success, None);
    // A wrong key is refused and nothing of it is stored.
    let wrong = [
        ("content-type", "application/x-protobuf"),
        ("authorization", "Bearer tg_not_a_key"),
    ];
    let (status, _, _) = post(&url, &wrong, encode(&request_n("wrong", 100, 3)));
    assert_eq!(status, 401);
    gw.shutdown().expect("app::run returned an error");

    let mut names = span_names(&archive_spans_in(dir.path(), Some(&project)));
    names.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("ip-{i}")).collect();
    want.sort();
    assert_eq!(
        names, want,
        "every acknowledged span archived once, nothing else"
    );
}
