//! What every benchmark shares: the request it measures (`realistic_request`, from
//! `tracegate_spangen`: 20 string attributes with random values + 1 int, ~1.2 KB/span), the
//! per-CPU-second measurement each prints before criterion runs, and the allocator tuning.

/// One request of `n` realistic spans (`tracegate_spangen`, the generator the load tool and the
/// tests share); `seed` makes ids and values differ between requests.
pub use tracegate_spangen::realistic_request;

/// One authenticated project's request path as the gateway holds it, with the default limits:
/// what `ingest::prepare`, the scan and the slow path's stamp need (shared by the benches).
pub struct IngestSetup {
    pub limits: tracegate::config::LimitsConfig,
    pub span_limits: tracegate_otlp::validate::SpanLimits,
    pub admission: tracegate::admission::Admission,
    pub keys: Vec<String>,
    pub principal: tracegate::auth::authenticator::Principal,
}

impl Default for IngestSetup {
    fn default() -> Self {
        let limits = tracegate::config::LimitsConfig::default();
        IngestSetup {
            span_limits: limits.span_limits(),
            admission: tracegate::admission::Admission::new(limits.max_inflight_bytes),
            limits,
            keys: tracegate::config::AuthConfig::default().tenant_attribute_keys,
            principal: tracegate::auth::authenticator::Principal {
                project_id: "bench".into(),
                org_id: "o".into(),
                ..Default::default()
            },
        }
    }
}

impl IngestSetup {
    /// The tenant claims the scan checks.
    pub fn claims(&self) -> Vec<tracegate_otlp::scan::Claim<'_>> {
        tracegate::ingest::tenant_claims(&self.keys, &self.principal)
    }

    /// What the request path does per request: reserve, decompress, scan (or decode, validate,
    /// stamp), keep the bytes for the envelope.
    pub fn prepare(
        &self,
        format: tracegate_otlp::codec::Format,
        compression: tracegate_otlp::codec::Compression,
        body: &bytes::Bytes,
    ) -> tracegate::ingest::Prepared {
        let permit = self.admission.try_reserve(body.len()).unwrap();
        tracegate::ingest::prepare(
            format,
            compression,
            body.clone(),
            &self.limits,
            permit,
            Some((&self.keys, &self.principal)),
        )
        .unwrap()
        .0
    }

    /// `ingest::signals::prepare_decoded` for a logs or metrics request (`T`): the gateway's
    /// path for the other signals (decompress, prost decode, validate, stamp).
    pub fn prepare_signal<T: tracegate::ingest::signals::Decoded>(
        &self,
        format: tracegate_otlp::codec::Format,
        compression: tracegate_otlp::codec::Compression,
        body: &bytes::Bytes,
    ) -> tracegate::ingest::Prepared {
        let permit = self.admission.try_reserve(body.len()).unwrap();
        tracegate::ingest::signals::prepare_decoded::<T>(
            format,
            compression,
            body.clone(),
            &self.limits,
            permit,
            (&self.keys, &self.principal),
        )
        .unwrap()
        .0
    }
}

/// CPU time of the calling thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time it
/// does not count the time other processes on a shared machine take from this thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `f` `rounds` times (after one warm-up call), prints and returns `spans` per CPU-second
/// of this thread, and the CPU time per call.
pub fn per_cpu_second<T>(
    label: &str,
    spans: usize,
    rounds: usize,
    mut f: impl FnMut() -> T,
) -> f64 {
    std::hint::black_box(f());
    let t0 = thread_cpu_seconds();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    let secs = (thread_cpu_seconds() - t0).max(1e-9);
    let rate = (rounds * spans) as f64 / secs;
    eprintln!(
        "{label}: {rate:.0} spans per CPU-second ({:.1} µs CPU per call, {rounds} calls)",
        secs / rounds as f64 * 1e6
    );
    rate
}

/// Tunes glibc malloc as the `tracegate` binary does at start-up (`tracegate::alloc`), unless
/// `TRACEGATE_BENCH_DEFAULT_MALLOC=1` asks for glibc's defaults (to measure the difference).
pub fn tune_allocator_like_the_binary() {
    if std::env::var_os("TRACEGATE_BENCH_DEFAULT_MALLOC").is_some_and(|v| v == "1") {
        eprintln!("allocator: glibc defaults (TRACEGATE_BENCH_DEFAULT_MALLOC=1)");
    } else {
        tracegate::alloc::tune_malloc();
        eprintln!("allocator: tuned as the tracegate binary (tracegate::alloc)");
    }
}
