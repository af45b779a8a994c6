//! The gateway started in-process with `app::run` on port-0 listeners (as `main` does, without
//! a child process), for tests that need the pipeline and not a process boundary. Metrics are
//! process-wide (one Prometheus recorder per test binary), so tests that read `/metrics` use the
//! real binary (`process.rs`).

use std::sync::mpsc;

use tracegate::app::{self, Listeners};
use tracegate::config::{Config, Overrides};

use super::*;

/// A gateway running `app::run` on a runtime of its own (the test's HTTP client is blocking).
pub struct InProcess {
    pub http: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<anyhow::Result<()>>,
}

impl InProcess {
    pub fn start(data_dir: &std::path::Path) -> Self {
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
        assert!(
            wait_until(START_TIMEOUT, || get(&format!("http://{admin}/readyz")).0
                == 200),
            "the in-process gateway never became ready"
        );
        Self {
            http,
            admin,
            stop: Some(stop),
            done,
        }
    }

    /// `http://<http listener>/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// Asks it to stop (as SIGTERM does) and waits for `app::run` to return.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.take().unwrap().send(()).ok();
        self.done
            .recv_timeout(TERM_TIMEOUT)
            .expect("app::run did not return after shutdown")
    }
}
