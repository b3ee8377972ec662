//! `tollgate dev-load-logs N [SPAN_SECS]`: a hidden development helper that writes N
//! synthetic log rows, spread evenly over the last SPAN_SECS (default a day), through the
//! logger's own batch write (`store::logs::write_batch`: COPY, rollups and usage in one
//! transaction), and reports the rows per second it sustained. Used by `make bench-analytics`
//! and by tests that need many varied latencies; never by `serve`.

use crate::config::LOG_BATCH_MAX;
use crate::store::logs::{write_batch, LogRow};
use crate::store::Pool;
use std::time::{Duration, Instant, SystemTime};

/// Distinct keys in the synthetic traffic; each belongs to one of `KEYS / 5` users and
/// calls two of `ROUTES` routes, so rollups see a realistic number of combinations (a few
/// hundred per minute), not one per row.
const KEYS: u64 = 50;
const ROUTES: u64 = 20;

/// splitmix64: deterministic, so two loads with the same arguments write the same rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn row(rng: &mut Rng, i: u64, at: SystemTime) -> LogRow {
    let key = rng.next() % KEYS + 1;
    let route = (key * 3 + rng.next() % 2) % ROUTES + 1;
    let status = match rng.next() % 100 {
        0..=89 => 200,
        90..=94 => 404,
        95..=96 => 429,
        _ => 500,
    };
    LogRow {
        request_id: format!("load-{i}"),
        api_key_id: Some(key as i64),
        user_id: Some(((key - 1) / 5 + 1) as i64),
        route_id: Some(route as i64),
        plan_id: None,
        // Every synthetic request passed the limit phase; its 429s stand for refusals.
        admitted: Some(status != 429),
        method: "GET".into(),
        path: format!("/svc{route}/items/{}", rng.next() % 1000),
        query: None,
        status,
        // Log-normal around 20 ms: a long tail, so p99 is far from p50.
        latency_ms: (20f64.ln() + 0.8 * rng.normal()).exp(),
        bytes_in: (rng.next() % 2_000) as i64,
        bytes_out: (100 + rng.next() % 20_000) as i64,
        client_ip: format!("10.0.{}.{}", key, rng.next() % 250),
        user_agent: Some("dev-load-logs".into()),
        created_at: at,
        upstream: Some(format!("http://10.0.1.{route}:8080")),
        attempts: Some(1),
    }
}

/// Writes the rows in `LOG_BATCH_MAX` batches, oldest first (as the logger would see them).
pub fn load(pool: &Pool, n: u64, span: Duration) -> Result<(), String> {
    let mut rng = Rng(n ^ span.as_secs());
    let start = SystemTime::now() - span;
    let step = span.as_secs_f64() / n.max(1) as f64;
    let began = Instant::now();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(LOG_BATCH_MAX);
    let mut last_report = Instant::now();
    while written < n {
        batch.clear();
        let end = (written + LOG_BATCH_MAX as u64).min(n);
        for i in written..end {
            let at = start + Duration::from_secs_f64(step * i as f64);
            batch.push(row(&mut rng, i, at));
        }
        let refs: Vec<&LogRow> = batch.iter().collect();
        write_batch(pool, &refs)?;
        written = end;
        if last_report.elapsed() >= Duration::from_secs(10) {
            log::info!("dev-load-logs: {written}/{n} rows");
            last_report = Instant::now();
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "dev-load-logs: wrote {n} rows in {secs:.1} s: {:.0} rows/s",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}
