//! A background load client that retries every request until it gets a 200.

use super::*;

/// What a load client saw.
#[derive(Default)]
pub struct LoadLog {
    /// Request ids answered 200, with the time of the answer.
    pub acked: Vec<(u64, Instant)>,
    /// Non-200 answers and transport errors: (time, status or 0 for a transport error).
    pub failures: Vec<(Instant, u16)>,
    /// Requests sent more than once.
    pub retried: u64,
}

/// Client threads POSTing OTLP/HTTP protobuf requests of unique spans (`{prefix}-{id}-{j}`)
/// to a gateway, each retried until it gets a 200 (or the load is stopped). The URL can be
/// changed while running (restarts on other ports are not needed: the kill tests reuse them).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    pub log: std::sync::Arc<std::sync::Mutex<LoadLog>>,
    pub prefix: String,
    pub spans_per_request: u64,
}

impl Load {
    /// `threads` clients, each sending a request then sleeping `pause`; failed requests are
    /// retried after `retry_pause`.
    pub fn start(
        url: &str,
        key: &str,
        prefix: &str,
        threads: usize,
        spans_per_request: u64,
        pause: Duration,
        retry_pause: Duration,
    ) -> Load {
        Self::start_spread(
            &[url],
            key,
            prefix,
            threads,
            spans_per_request,
            pause,
            retry_pause,
            &["identity"],
        )
    }

    /// As `start` over several gateways, with request `id` sent in `encodings[id % len]`
    /// (`identity`, `gzip`, `zstd`: the `content-encoding`): attempt `a` of request `id` goes to
    /// `urls[(id + a) % len]`, so a retry lands on another gateway, as behind a load balancer.
    #[allow(clippy::too_many_arguments)]
    pub fn start_spread(
        urls: &[&str],
        key: &str,
        prefix: &str,
        threads: usize,
        spans_per_request: u64,
        pause: Duration,
        retry_pause: Duration,
        encodings: &[&'static str],
    ) -> Load {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        let encodings: std::sync::Arc<Vec<&'static str>> = std::sync::Arc::new(encodings.to_vec());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let next = std::sync::Arc::new(AtomicU64::new(0));
        let log = std::sync::Arc::new(std::sync::Mutex::new(LoadLog::default()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, next, log) = (stop.clone(), next.clone(), log.clone());
                let encodings = encodings.clone();
                let (urls, auth, prefix) =
                    (urls.clone(), format!("Bearer {key}"), prefix.to_string());
                thread::spawn(move || {
                    let client = http_client_with_timeout(Duration::from_secs(15));
                    while !stop.load(Ordering::Relaxed) {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let encoding = encodings[(id as usize) % encodings.len().max(1)];
                        let headers = [
                            ("content-type", "application/x-protobuf"),
                            ("authorization", auth.as_str()),
                            ("content-encoding", encoding),
                        ];
                        let spans = (0..spans_per_request)
                            .map(|j| {
                                let n = id * spans_per_request + j;
                                span(trace_id(n / 10), span_id(n), &format!("{prefix}-{id}-{j}"))
                            })
                            .collect();
                        let plain = encode(&request_with_spans(spans));
                        let body = match encoding {
                            "gzip" => gzip(&plain),
                            "zstd" => zstd::encode_all(&plain[..], 3).expect("zstd"),
                            _ => plain,
                        };
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            if attempts == 2 {
                                log.lock().unwrap().retried += 1;
                            }
                            let url = &urls[(id as usize + attempts) % urls.len()];
                            match try_post(&client, url, &headers, body.clone()) {
                                Ok((200, _, _)) => {
                                    log.lock().unwrap().acked.push((id, Instant::now()));
                                    break;
                                }
                                Ok((status, _, _)) => {
                                    log.lock().unwrap().failures.push((Instant::now(), status))
                                }
                                Err(_) => log.lock().unwrap().failures.push((Instant::now(), 0)),
                            }
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            thread::sleep(retry_pause);
                        }
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            log,
            prefix: prefix.to_string(),
            spans_per_request,
        }
    }

    pub fn acked(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Stops the clients (a request in flight finishes, but is not retried) and joins them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread panicked");
        }
    }

    /// Names of every span of every acknowledged request.
    pub fn acked_span_names(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.acked
            .iter()
            .flat_map(|(id, _)| {
                (0..self.spans_per_request).map(move |j| format!("{}-{id}-{j}", self.prefix))
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}
